//! Parameters grouped by decoder layer, from their names (`model.layers.7.mlp.up_proj.weight`
//! is layer 7). A parameter outside any numbered layer is a group of its own.

use birdbone_host_api::ParamInfo;

/// The layer number in `name`: the digits after a `layers.`, `layer.`, `blocks.` or `h.`
/// component.
pub fn layer_of(name: &str) -> Option<u64> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "layer" | "blocks" | "h")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

/// Parameter indices grouped by layer, groups in order of first appearance.
pub fn groups(params: &[ParamInfo]) -> Vec<Vec<usize>> {
    let mut keys: Vec<(Option<u64>, String)> = Vec::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let key = match layer_of(&p.name) {
            Some(l) => (Some(l), String::new()),
            None => (None, p.name.to_string()),
        };
        match keys.iter().position(|k| *k == key) {
            Some(g) => out[g].push(i),
            None => {
                keys.push(key);
                out.push(vec![i]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_numbers_come_from_names() {
        assert_eq!(layer_of("model.layers.7.mlp.up_proj.weight"), Some(7));
        assert_eq!(layer_of("transformer.h.11.attn.c_attn.weight"), Some(11));
        assert_eq!(layer_of("lm_head.weight"), None);
        assert_eq!(layer_of("model.layers.x.weight"), None);
    }
}
