"""Services: computers, lifetimes, the canonical action model, the store."""
