"""Data: the VOC2012 segmentation layout (reader and synthetic generator), image
transforms shared by training and inference, and the instance-crop training sets."""
