"""Wire models of the Lightcone API and their translation to the core's terms."""
