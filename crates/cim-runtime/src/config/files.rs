//! Secrets given as files: every variable marked secret in [`super::VARS`] may instead be set as
//! `<NAME>_FILE`, the path of a file holding the value (Kubernetes Secrets and compose secrets
//! are mounted as files, which, unlike the environment, child processes do not inherit).

use super::{ConfigError, VARS};

/// What a secret variable's file form is called: `CIM_JWT_HS256_SECRET_FILE`.
pub fn file_var(name: &str) -> String {
    format!("{name}_FILE")
}

/// The secrets given as files (`<NAME>_FILE`), read once, each value without the line break a
/// file usually ends with. Setting both forms of one variable is an error: which one wins would
/// be a guess.
pub(super) fn secret_files(
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(&'static str, String)> {
    let mut values = Vec::new();
    for spec in VARS.iter().filter(|v| v.secret.is_secret()) {
        let file = file_var(spec.name);
        let Some(path) = lookup(&file).filter(|p| !p.trim().is_empty()) else { continue };
        let error = |got: String| ConfigError {
            var: file.clone(),
            expected: format!("the path of a readable file holding {}", spec.expected),
            got,
        };
        if lookup(spec.name).is_some_and(|v| !v.is_empty()) {
            errors.push(ConfigError {
                var: file.clone(),
                expected: format!("either {} or {file}, not both", spec.name),
                got: "both set".to_owned(),
            });
            continue;
        }
        match std::fs::read_to_string(path.trim()) {
            Ok(text) if !text.trim().is_empty() => {
                values.push((spec.name, text.trim_end_matches(['\n', '\r']).to_owned()));
            }
            Ok(_) => errors.push(error(format!("{path:?}, an empty file"))),
            Err(e) => errors.push(error(format!("{path:?} ({e})"))),
        }
    }
    values
}
