"""From recorded play to a world folder: training, distillation, checkpoints, bundling."""
