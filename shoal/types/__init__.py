"""The API objects, named and shaped as Docker names them (PascalCase on the wire).

Imported by every other package; imports nothing of shoal's.
"""
