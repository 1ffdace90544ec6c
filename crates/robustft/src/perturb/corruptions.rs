//! Common corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C) for images of any size.
