//! Which parameters a pass prunes, and what a parameter's name says of its place: rules on
//! names and shapes alone, the same for every tensor library.

use birdbone_host_api::ParamRole;

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Which parameters a pass prunes.
///
/// By default: 2-D tensors whose name ends in `weight`, except embeddings, the LM head and
/// norms (names containing `embed`, `lm_head`, `norm`, `wte` or `wpe`): the Linear weights of a
/// transformer. `include` patterns replace the default; `exclude` patterns always apply.
///
/// A pattern is a glob on the parameter's name (`*` matches any run of characters), or, with
/// the prefix `re:`, a regular expression on *module* names as llm-compressor's `targets` and
/// `ignore` use them: it matches a parameter when it matches (from the start, like Python's
/// `re.match`) the name of the module holding it or of any module above it. An included `re:`
/// pattern selects the 2-D weights of the modules it matches; an excluded one removes every
/// parameter under them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ParamFilter {
    /// Glob patterns of names to prune (empty: the default rule).
    #[serde(default)]
    pub include: Vec<String>,
    /// Glob patterns of names never to prune.
    #[serde(default)]
    pub exclude: Vec<String>,
}

const NEVER_BY_DEFAULT: &[&str] = &["embed", "lm_head", "norm", "wte", "wpe"];

impl ParamFilter {
    /// Whether `name` (of a tensor of `dims`) is selected.
    pub fn selects(&self, name: &str, dims: &[i64]) -> bool {
        let linear = dims.len() == 2 && name.ends_with("weight");
        if self.exclude.iter().any(|p| pattern_matches(p, name)) {
            return false;
        }
        if !self.include.is_empty() {
            return self.include.iter().any(|p| match p.strip_prefix("re:") {
                Some(_) => linear && pattern_matches(p, name),
                None => glob_match(p, name),
            });
        }
        linear && !NEVER_BY_DEFAULT.iter().any(|w| name.contains(w))
    }

    /// Checks every `re:` pattern compiles (a bad one is an error naming it).
    pub fn validate(&self) -> crate::Result<()> {
        for p in self.include.iter().chain(&self.exclude) {
            if let Some(re) = p.strip_prefix("re:") {
                if let Err(e) = compiled(re) {
                    crate::bail!("pattern '{p}' is not a valid regular expression: {e}");
                }
            }
        }
        Ok(())
    }
}

/// A glob on the name, or a `re:` regex on the modules above it.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let Some(re) = pattern.strip_prefix("re:") else {
        return glob_match(pattern, name);
    };
    let Ok(re) = compiled(re) else {
        return false;
    };
    // The module holding the parameter, then every module above it; a match must start at
    // the first character (re.match), and `$` then ties it to that module's name.
    let mut module = name.rsplit_once('.').map_or("", |(m, _)| m);
    loop {
        if re.find(module).is_some_and(|m| m.start() == 0)
            || re.find(name).is_some_and(|m| m.start() == 0)
        {
            return true;
        }
        match module.rsplit_once('.') {
            Some((up, _)) => module = up,
            None => return false,
        }
    }
}

/// Regexes are compiled once per pattern: filters are consulted on every pass.
fn compiled(re: &str) -> Result<regex::Regex, regex::Error> {
    use std::{collections::HashMap, sync::Mutex};
    static CACHE: Mutex<Option<HashMap<String, regex::Regex>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(r) = map.get(re) {
        return Ok(r.clone());
    }
    let r = regex::Regex::new(re)?;
    map.insert(re.to_string(), r.clone());
    Ok(r)
}

/// What the name says of a parameter's place: the block index after `layers.`/`h.`/`blocks.`
/// /`layer.`, and the module name before `.weight`.
pub fn role_of(name: &str) -> ParamRole {
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts
        .windows(2)
        .find(|w| {
            matches!(w[0], "layers" | "h" | "blocks" | "layer") && w[1].parse::<u32>().is_ok()
        })
        .map(|w| w[1].parse().expect("checked"));
    let kind = match parts.as_slice() {
        [.., kind, "weight" | "bias"] => kind.to_string(),
        _ => String::new(),
    };
    ParamRole {
        layer: layer.into(),
        kind: kind.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "model.layers.*.mlp.*",
            "model.layers.3.mlp.down_proj.weight"
        ));
        assert!(!glob_match(
            "*.q_proj.weight",
            "model.layers.3.self_attn.k_proj.weight"
        ));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn default_filter_takes_linear_weights_only() {
        let f = ParamFilter::default();
        assert!(f.selects("model.layers.0.self_attn.q_proj.weight", &[576, 576]));
        assert!(!f.selects("model.embed_tokens.weight", &[49152, 576]));
        assert!(!f.selects("model.layers.0.input_layernorm.weight", &[576]));
        assert!(!f.selects("lm_head.weight", &[49152, 576]));
        let g = ParamFilter {
            include: vec![],
            exclude: vec!["*.layers.0.*".into()],
        };
        assert!(!g.selects("model.layers.0.self_attn.q_proj.weight", &[576, 576]));
    }

    #[test]
    fn module_regexes_as_llm_compressor_reads_them() {
        let f = ParamFilter {
            include: vec![r"re:model.layers.\d*$".into()],
            exclude: vec!["re:.*down_proj".into()],
        };
        f.validate().unwrap();
        assert!(f.selects("model.layers.3.self_attn.q_proj.weight", &[576, 576]));
        assert!(!f.selects("model.layers.3.input_layernorm.weight", &[576]));
        assert!(!f.selects("model.layers.3.mlp.down_proj.weight", &[576, 1536]));
        assert!(!f.selects("model.embed_tokens.weight", &[49152, 576]));
        let head = ParamFilter {
            include: vec![],
            exclude: vec!["re:.*lm_head".into()],
        };
        assert!(!head.selects("lm_head.weight", &[10, 4]));
        let bad = ParamFilter {
            include: vec!["re:(".into()],
            exclude: vec![],
        };
        assert!(bad.validate().unwrap_err().to_string().contains("re:("));
    }

    #[test]
    fn roles_from_names() {
        let r = role_of("model.layers.12.mlp.down_proj.weight");
        assert_eq!(r.layer.into_option(), Some(12));
        assert_eq!(r.kind.as_str(), "down_proj");
        assert_eq!(role_of("fc1.weight").layer.into_option(), None);
    }
}
