"""Models: loading and checking a BERT teacher, building and saving students (BERT and ROSITA).
"""
