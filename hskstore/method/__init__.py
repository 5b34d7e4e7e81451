"""The method itself: the compression triple, length and width strategies, selection, losses, bit encodings.

Pure functions over tensors; nothing here reads files or knows about stores.
"""
