"""Device drivers without ROS: cameras (librealsense, OpenCV).

A driver opens its device, reads frames and closes it (``camera.CameraDevice``);
``capture.CaptureLoop`` runs one on its own thread and keeps it running through unplugs,
so the ROS nodes stay thin shells that publish what the loop hands them.
"""
