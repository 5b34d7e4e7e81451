"""Runtime: device and precision choice, torchrun worlds, checkpoint pieces, output guards, preflight, schedules.
"""
