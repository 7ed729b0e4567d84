"""Desktop computers: Xvfb + openbox + XTest input + XShm frames, and a headful Chromium."""
