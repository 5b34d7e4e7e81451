"""Data: task sources (hub, GLUE files, local tables, the embedded tweets), tokenisation and GLUE metrics.
"""
