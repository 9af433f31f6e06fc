"""Kernel management and the kernel websocket bridge, used by the per-user server.

manager.py starts and culls kernels, kernel.py watches one, channels.py bridges websockets.
"""
