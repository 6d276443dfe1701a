//! Environment overrides: `CXR_WORKER__SECTION__KEY=value` applied to the parsed TOML table
//! before it is validated.

use std::collections::BTreeMap;

use super::ConfigError;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CXR_WORKER__";

/// Apply `CXR_WORKER__SECTION__KEY=value` overrides. A value is read as a TOML value (`32`,
/// `true`, `["A", "B"]`) unless the key already holds a string, or it is not valid TOML.
pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (var, value) in env {
        if var.starts_with(ENV_PREFIX) {
            overrides.insert(var, value);
        }
    }
    for (var, raw) in overrides {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let [section, key] = path.as_slice() else {
            return Err(ConfigError::Env {
                var,
                message: "expected CXR_WORKER__SECTION__KEY".into(),
            });
        };
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Env {
                var,
                message: format!("`{section}` is not a section"),
            });
        };
        let existing_is_string = matches!(section_table.get(key), Some(toml::Value::String(_)));
        let value = if existing_is_string {
            toml::Value::String(raw)
        } else {
            parse_toml_value(&raw).unwrap_or(toml::Value::String(raw))
        };
        section_table.insert(key.clone(), value);
    }
    Ok(())
}

fn parse_toml_value(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    t.remove("v")
}
