//! Config from environment variables: with no config file, a connector may read the
//! variables of a program it stands in for (`Kind::env_config`). The variables become a
//! config text that goes through the same checks as a file; a problem is reported under the
//! variable it came from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{self, ConfigError, ConfigErrors, Loaded};

/// A config made from variables, and what to tell the operator about them.
#[derive(Debug)]
pub struct FromEnv {
    pub loaded: Loaded,
    /// Where it came from: `<PROGRAM>_* variables`.
    pub name: String,
    /// Variables that are set but change nothing: each is named in a warning at start.
    pub warnings: Vec<String>,
}

/// The config the first registered kind that reads the variables makes of them; `None`
/// when no kind's variables are set.
pub fn load(vars: &BTreeMap<String, String>) -> Option<Result<FromEnv, ConfigErrors>> {
    let made = crate::registry::kinds()
        .values()
        .find_map(|kind| kind.env_config(vars))?;
    let fail = |name: &str, errors: Vec<ConfigError>| ConfigErrors {
        path: PathBuf::from(name),
        errors,
    };
    let env = match made {
        Ok(env) => env,
        Err(problems) => {
            let errors = problems
                .into_iter()
                .map(|(variable, message)| ConfigError {
                    key: variable,
                    line: None,
                    message,
                })
                .collect();
            return Some(Err(fail("environment variables", errors)));
        }
    };
    Some(match config::parse(&env.text) {
        Ok(loaded) => Ok(FromEnv {
            loaded,
            name: env.name,
            warnings: env.warnings,
        }),
        Err(errors) => {
            let errors = errors
                .into_iter()
                .map(|e| ConfigError {
                    key: variable_of(&env.origin, &e.key),
                    line: None,
                    message: e.message,
                })
                .collect();
            Err(fail(&env.name, errors))
        }
    })
}

/// The variable a config key came from: that of the longest key in `origin` that is the
/// key or above it (or the key itself when none is).
fn variable_of(origin: &BTreeMap<String, String>, key: &str) -> String {
    origin
        .iter()
        .filter(|(k, _)| {
            key == k.as_str()
                || key.starts_with(&format!("{k}."))
                || key.starts_with(&format!("{k}["))
        })
        .max_by_key(|(k, _)| k.len())
        .map_or_else(|| key.to_string(), |(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_named_by_the_variable_it_came_from() {
        let origin: BTreeMap<String, String> = [
            ("matrix".to_string(), "X_LOGIN".to_string()),
            ("matrix.homeserver".to_string(), "X_HOMESERVER".to_string()),
        ]
        .into();
        assert_eq!(variable_of(&origin, "matrix.homeserver"), "X_HOMESERVER");
        assert_eq!(variable_of(&origin, "matrix.user"), "X_LOGIN");
        assert_eq!(variable_of(&origin, "http.listen"), "http.listen");
    }
}
