//! The trainable parameter store of a model: every parameter is a candle [`Var`] addressed by
//! its checkpoint name (HF layout), kept in a stable order so that per-layer state of later
//! methods (FTP radii, SPD anchors) lines up across runs, resumes and checkpoints.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

/// Named trainable parameters in a fixed order.
#[derive(Clone, Default)]
pub struct ParamStore {
    names: Vec<String>,
    vars: HashMap<String, Var>,
}

impl ParamStore {
    /// Builds a store from `(name, tensor)` pairs; each tensor becomes a fresh `Var`.
    pub fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor)>) -> candle_core::Result<Self> {
        let mut store = Self::default();
        for (name, tensor) in tensors {
            store.insert(name, Var::from_tensor(&tensor)?);
        }
        Ok(store)
    }

    fn insert(&mut self, name: String, var: Var) {
        if self.vars.insert(name.clone(), var).is_none() {
            self.names.push(name);
        }
    }

    /// The parameter called `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    /// Parameter names in store order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// `(name, var)` pairs in store order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.names.iter().map(|n| (n.as_str(), &self.vars[n]))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn element_count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A view whose tensors are the `Var`s themselves: gradients flow into the parameters.
    pub fn tracked(&self) -> WeightView<'_> {
        WeightView { store: self, detached: false }
    }

    /// A view whose tensors share the parameters' storage (so they see every optimiser
    /// update) but record no autograd graph: inference keeps no intermediate activations.
    pub fn detached(&self) -> WeightView<'_> {
        WeightView { store: self, detached: true }
    }

    /// A detached copy of every parameter's current value (e.g. the frozen pre-trained
    /// weights that regularised methods pull toward).
    pub fn snapshot(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        self.iter().map(|(name, var)| Ok((name.to_string(), var.as_tensor().detach().copy()?))).collect()
    }
}

/// How modules read their weights from a [`ParamStore`].
#[derive(Clone, Copy)]
pub struct WeightView<'a> {
    store: &'a ParamStore,
    detached: bool,
}

impl WeightView<'_> {
    /// The tensor of parameter `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<Tensor> {
        let var = self.store.get(name)?;
        Some(if self.detached { var.as_tensor().detach() } else { var.as_tensor().clone() })
    }
}
