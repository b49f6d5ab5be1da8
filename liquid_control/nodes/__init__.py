"""Thin rclpy nodes over the pure layers below."""
