"""Data layer (numpy, OpenCV, rosbags): images, episodes, bag and tub readers."""
