//! The spatial attack (Engstrom et al., ICML 2019).
