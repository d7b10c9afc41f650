"""Nexes: the data backbone of a field-service ERP."""
