"""The groundwork every stage stands on.

Params, errors, atomic writes, entry points, numerics, devices and processes, the Hub client.
"""
