//! Where parameters come from: a VarStore, a TorchScript module, any list of named tensors.

use birdbone_host::ParamFilter;
use tch::{nn::VarStore, CModule, Tensor};

use crate::error::Result;

/// Anything with named parameters. Tensors returned share storage with the model: pruning
/// writes through them.
pub trait ParamSource {
    /// Every parameter, sorted by name.
    fn named_parameters(&self) -> Result<Vec<(String, Tensor)>>;
}

impl ParamSource for VarStore {
    fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v: Vec<(String, Tensor)> = self.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }
}

impl ParamSource for CModule {
    fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        let mut v = CModule::named_parameters(self)?;
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }
}

impl ParamSource for [(String, Tensor)] {
    fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect())
    }
}

impl ParamSource for Vec<(String, Tensor)> {
    fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        self.as_slice().named_parameters()
    }
}

/// The parameters of `source` that `filter` selects, in name order.
pub fn selected(
    source: &(impl ParamSource + ?Sized),
    filter: &ParamFilter,
) -> Result<Vec<(String, Tensor)>> {
    Ok(source
        .named_parameters()?
        .into_iter()
        .filter(|(n, t)| filter.selects(n, &t.size()))
        .collect())
}
