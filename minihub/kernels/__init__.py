"""Kernel management and the kernel websocket bridge, used by the per-user server.

manager.py starts and culls kernels, kernel.py watches one, channels.py bridges websockets;
transport.py and launch.py keep every kernel socket a unix socket in the user's private dir.
"""
