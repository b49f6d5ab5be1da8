"""Liquid neural network policies for ROS 2 robots."""

__version__ = '0.1.0'
