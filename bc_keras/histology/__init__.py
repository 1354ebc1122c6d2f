"""TensorFlow-free domain knowledge of breast histology: BreaKHis names, image checks, H&E stain
maths and synthetic tissue."""
