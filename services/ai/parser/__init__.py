"""The embedded generator's parser: a question and a schema in, an immutable Query out (or CannotAnswer).

Each step is a module of small functions over one Reading (state.py); the order of the steps matters,
since each marks the words it used and later steps read only the words left.
"""
