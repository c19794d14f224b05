"""Turning radiograph files into the images readers see: decoding, normalising, phantoms."""
