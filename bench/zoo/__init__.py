"""What a task is made of: data sets, pretrained backbones, regularizers, label noise, and
the task that combines them."""
