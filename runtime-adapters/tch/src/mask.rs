//! Masks: one bit per weight, kept beside the model so pruned weights stay pruned after an
//! optimizer step, and saved as safetensors.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use birdbone_host::mask_file::{self, StoredMask};
use tch::{Device, Kind, Tensor};

use crate::{
    engine,
    error::{HostError, Result},
    params::ParamSource,
};

/// The mask of one parameter.
pub struct ParamMask {
    /// The parameter's shape.
    pub shape: Vec<i64>,
    /// One bit per weight, 1 = kept (the `birdbone_select::BitMask` layout), as u8 on the
    /// weight's device.
    pub bits: Tensor,
}

impl ParamMask {
    /// Number of weights.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product::<i64>() as u64
    }

    /// Number of pruned weights.
    pub fn pruned(&self) -> Result<u64> {
        let bytes = Vec::<u8>::try_from(&self.bits.to_device(Device::Cpu))?;
        Ok(self.numel() - bytes.iter().map(|b| b.count_ones() as u64).sum::<u64>())
    }

    /// The mask as a bool tensor of the parameter's shape (true = kept).
    pub fn keep(&self) -> Result<Tensor> {
        Ok(engine::unpack_keep(&self.bits, self.numel() as i64)?
            .f_reshape(self.shape.as_slice())?)
    }
}

/// Masks by parameter name.
#[derive(Default)]
pub struct MaskSet {
    masks: BTreeMap<String, ParamMask>,
}

impl MaskSet {
    /// No masks.
    pub fn new() -> MaskSet {
        MaskSet::default()
    }

    /// Sets the mask of `name`.
    pub fn insert(&mut self, name: impl Into<String>, mask: ParamMask) {
        self.masks.insert(name.into(), mask);
    }

    /// The mask of `name`.
    pub fn get(&self, name: &str) -> Option<&ParamMask> {
        self.masks.get(name)
    }

    /// Adds every mask of `other`, replacing masks of the same names.
    pub fn extend(&mut self, other: MaskSet) {
        self.masks.extend(other.masks);
    }

    /// Every mask, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ParamMask)> {
        self.masks.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of masked parameters.
    pub fn len(&self) -> usize {
        self.masks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.masks.is_empty()
    }

    /// Pruned and total weights over all masks.
    pub fn counts(&self) -> Result<(u64, u64)> {
        let mut pruned = 0;
        let mut total = 0;
        for m in self.masks.values() {
            pruned += m.pruned()?;
            total += m.numel();
        }
        Ok((pruned, total))
    }

    fn matched<'a>(
        &'a self,
        params: &'a [(String, Tensor)],
    ) -> Result<Vec<(&'a Tensor, &'a ParamMask)>> {
        let by_name: HashMap<&str, &Tensor> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.masks
            .iter()
            .map(|(name, m)| {
                let t = by_name.get(name.as_str()).ok_or_else(|| {
                    HostError::Invalid(format!("the model has no parameter '{name}' for its mask"))
                })?;
                if t.size() != m.shape {
                    return Err(HostError::Shape {
                        op: "mask",
                        message: format!(
                            "'{name}' is {:?} but its mask is {:?}",
                            t.size(),
                            m.shape
                        ),
                    }
                    .into());
                }
                Ok((*t, m))
            })
            .collect()
    }

    /// Re-applies every mask to the model in place (after an optimizer step, say): pruned weights
    /// go back to zero, whatever the optimizer did. Returns how many weights the masks hold at
    /// zero. Checks every name and shape before writing anything.
    pub fn apply(&self, model: &(impl ParamSource + ?Sized)) -> Result<u64> {
        let params = model.named_parameters()?;
        let pairs = self.matched(&params)?;
        let _g = tch::no_grad_guard();
        let bits: Vec<Tensor> = pairs
            .iter()
            .map(|(t, m)| {
                if m.bits.device() == t.device() {
                    m.bits.shallow_clone()
                } else {
                    m.bits.to_device(t.device())
                }
            })
            .collect();
        let items: Vec<(&Tensor, &Tensor)> =
            pairs.iter().zip(&bits).map(|((t, _), b)| (*t, b)).collect();
        // One batched launch on a GPU; the counts are read once, after it.
        let counts = engine::apply_masks(&items)?;
        counts.iter().map(|c| c.get()).sum()
    }

    /// Zeroes the gradients of pruned weights (call between backward and the optimizer step).
    pub fn mask_gradients(&self, model: &(impl ParamSource + ?Sized)) -> Result<()> {
        let params = model.named_parameters()?;
        let pairs = self.matched(&params)?;
        let _g = tch::no_grad_guard();
        let mut grads = Vec::new();
        for (t, m) in pairs {
            let g = t.grad();
            if g.defined() {
                let bits = if m.bits.device() == g.device() {
                    m.bits.shallow_clone()
                } else {
                    m.bits.to_device(g.device())
                };
                grads.push((g, bits));
            }
        }
        let items: Vec<(&Tensor, &Tensor)> = grads.iter().map(|(g, b)| (g, b)).collect();
        engine::apply_masks(&items)?;
        Ok(())
    }

    /// Writes the masks in the mask file format ([`birdbone_host::mask_file`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let stored = self
            .masks
            .iter()
            .map(|(name, m)| {
                Ok(StoredMask {
                    name: name.clone(),
                    shape: m.shape.clone(),
                    bits: Vec::<u8>::try_from(&m.bits.to_device(Device::Cpu))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(mask_file::write(&stored, path)?)
    }

    /// Reads masks written by [`MaskSet::save`], onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<MaskSet> {
        let mut set = MaskSet::new();
        for m in mask_file::read(path)? {
            let bits = Tensor::from_slice(&m.bits).f_to_device(device)?;
            debug_assert_eq!(bits.kind(), Kind::Uint8);
            set.insert(
                m.name,
                ParamMask {
                    shape: m.shape,
                    bits,
                },
            );
        }
        Ok(set)
    }
}
