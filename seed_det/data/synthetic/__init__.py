"""Datasets generated on the spot, no download: the writers the demo, the benchmarks and the tests use.

- `digit_scenes`: detection / instance-segmentation scenes of real handwritten digits (COCO json and
  VOC layout) with unlabelled pretraining crops;
- `digits`: scikit-learn's 1,797 digits as an ImageFolder (classification, k-NN, linear probe);
- `shapes`: coloured shapes on textured backgrounds (detection / segmentation, COCO json and VOC);
- `voc_layout`: the one writer of their PASCAL VOC annotation files.

They write files and log; they never print.
"""
