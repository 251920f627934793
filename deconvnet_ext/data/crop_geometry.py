"""The geometry of DeconvNet's training crops, shared by the crop sets (data.crops) and
inference (infer.InferenceConfig.context). Plain numbers: importing this pulls in
nothing else (infer reads it without loading OpenCV)."""

RESIZE_RATIO = 250 / 224  # the original: resize to 250, random crop 224
ENLARGE = 1.2  # training crops: the box enlarged 1.2x about its centre
# What a training crop shows of its box: the 1.2x box warped to 250 px, 224 of them kept.
# Inference crops a proposal with this context, so the network sees objects at the scale
# it learnt them.
TRAINING_CROP_CONTEXT = ENLARGE / RESIZE_RATIO
