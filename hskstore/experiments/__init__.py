"""Experiments built from the stages: the embedded demo, `bench` and the accuracy-against-A^HSK `sweep`.
"""
