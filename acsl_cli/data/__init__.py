"""Datasets. ``annotations`` + ``validate``: strict, torch-free reading of LVIS/COCO files;
``groups``: the one LVIS frequency-group rule, always from train; ``lvis_dataset``: the torch
Dataset; ``synthetic``: the embedded benchmark; ``build``: config -> datasets."""
