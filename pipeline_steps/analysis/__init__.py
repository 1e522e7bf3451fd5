"""Fits and figures over run records: the IsoFLOP quadratics and power laws."""
