//! A small hand-rolled command-line parser: `spindle-bench <scenario> [options]`.
//!
//! Each scenario pulls the options it understands out of an [`Args`] and then
//! calls [`Args::finish`], which rejects anything left over, so a mistyped
//! option is an error rather than silently ignored.

use crate::BoxResult;
use std::str::FromStr;

/// The options after the scenario name, consumed as a scenario asks for them.
#[derive(Debug)]
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    /// Wraps the arguments that follow the scenario name.
    pub fn new(rest: Vec<String>) -> Self {
        Args { rest }
    }

    /// True (and consumed) if the bare flag `name` is present.
    pub fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// The value of `--name VALUE` or `--name=VALUE`, parsed; `None` if absent.
    pub fn value<T>(&mut self, name: &str) -> BoxResult<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        let prefix = format!("{name}=");
        let mut found = None;
        let mut i = 0;
        while i < self.rest.len() {
            if self.rest[i] == name {
                if i + 1 >= self.rest.len() {
                    return Err(format!("option {name} needs a value").into());
                }
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                found = Some(v);
            } else if let Some(v) = self.rest[i].strip_prefix(&prefix) {
                found = Some(v.to_string());
                self.rest.remove(i);
            } else {
                i += 1;
            }
        }
        match found {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| format!("option {name}: cannot parse {v:?}: {e}").into()),
        }
    }

    /// Like [`Args::value`] with a default.
    pub fn value_or<T>(&mut self, name: &str, default: T) -> BoxResult<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        Ok(self.value(name)?.unwrap_or(default))
    }

    /// Fails if any argument was not consumed.
    pub fn finish(self) -> BoxResult<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown arguments: {}", self.rest.join(" ")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        Args::new(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn flags_values_and_leftovers() {
        let mut a = args(&["--json", "--dir", "/x", "--seconds=2.5", "--bogus"]);
        assert!(a.flag("--json"));
        assert!(!a.flag("--quiet"));
        assert_eq!(a.value::<String>("--dir").unwrap().as_deref(), Some("/x"));
        assert_eq!(a.value_or("--seconds", 1.0).unwrap(), 2.5);
        assert_eq!(a.value_or("--records", 7u64).unwrap(), 7);
        assert!(a.finish().is_err());
    }

    #[test]
    fn missing_value_is_an_error() {
        let mut a = args(&["--dir"]);
        assert!(a.value::<String>("--dir").is_err());
    }
}
