//! A recipe's method sections (`[constraint]`, `[drm]`, `[lp]`, `[fsr]`, `[m2mix]`, `[vrf]`,
//! …) as raw TOML, read by the components that own them (docs/design.md, "Adding a method").
//! The recipe parser does not interpret them: each method, constraint, objective term and
//! predictor reads its own section into its own strict struct (`deny_unknown_fields`, its
//! defaults), and the values it read — defaults filled in — are what the run directory's
//! resolved recipe keeps.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The sections of one recipe, and what their owners have read of them so far.
#[derive(Clone, Debug, Default)]
pub struct Sections {
    raw: toml::Table,
    resolved: toml::Table,
}

impl Sections {
    pub fn new(raw: toml::Table) -> Self {
        Self { raw, resolved: toml::Table::new() }
    }

    /// Reads section `name` into `T` (its defaults where the recipe is silent) and keeps the
    /// resolved values for the run directory's recipe. Errors name the section.
    pub fn read<T: Serialize + DeserializeOwned>(&mut self, name: &str) -> Result<T, String> {
        let value: T = self.peek(name)?;
        self.keep(name, &value);
        Ok(value)
    }

    /// Reads section `name`, whose key `tag` selects a variant, into `T` (the other keys):
    /// `[constraint] name = "spd"` and SPD's own keys.
    pub fn read_tagged<T: Serialize + DeserializeOwned>(
        &mut self,
        name: &str,
        tag: &str,
        variant: &str,
    ) -> Result<T, String> {
        let mut table = self.table(name)?;
        table.remove(tag);
        let value: T = parse(name, table)?;
        let mut resolved = toml::Table::from_iter([(tag.to_string(), toml::Value::from(variant))]);
        if let toml::Value::Table(fields) = to_table(&value) {
            resolved.extend(fields);
        }
        self.resolved.insert(name.to_string(), toml::Value::Table(resolved));
        Ok(value)
    }

    /// Keeps `value` as section `name`'s resolved values: for an owner that `peek`ed it and
    /// filled in a default that depends on its other keys.
    pub fn keep<T: Serialize>(&mut self, name: &str, value: &T) {
        self.resolved.insert(name.to_string(), to_table(value));
    }

    /// Reads section `name` into `T` without keeping it (checks of a section the run does not
    /// use).
    pub fn peek<T: DeserializeOwned>(&self, name: &str) -> Result<T, String> {
        parse(name, self.table(name)?)
    }

    /// The string value of `section.key`, if the recipe sets it.
    pub fn tag(&self, section: &str, key: &str) -> Result<Option<String>, String> {
        match self.table(section)?.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("{section}.{key} must be a string, not {other}")),
        }
    }

    /// The names of the sections the recipe sets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.raw.keys().map(String::as_str)
    }

    /// Whether an owner has read section `name`.
    pub fn was_read(&self, name: &str) -> bool {
        self.resolved.contains_key(name)
    }

    /// The sections as read, defaults filled in (what the resolved recipe keeps).
    pub fn resolved(&self) -> &toml::Table {
        &self.resolved
    }

    fn table(&self, name: &str) -> Result<toml::Table, String> {
        match self.raw.get(name) {
            None => Ok(toml::Table::new()),
            Some(toml::Value::Table(table)) => Ok(table.clone()),
            Some(other) => Err(format!("`{name}` must be a table ([{name}]), not {other}")),
        }
    }
}

/// The entry of `table` named `name`, or an error naming `key` and the known names.
pub fn find_entry<'t, T>(
    table: &'t [T],
    name_of: fn(&T) -> &str,
    name: &str,
    key: &str,
) -> std::result::Result<&'t T, String> {
    table.iter().find(|entry| name_of(entry) == name).ok_or_else(|| {
        let known: Vec<&str> = table.iter().map(name_of).collect();
        format!("{key} = \"{name}\" is unknown (known: {})", known.join(", "))
    })
}

fn parse<T: DeserializeOwned>(name: &str, table: toml::Table) -> Result<T, String> {
    toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
        let message = e.message();
        match message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')) {
            Some((key, rest)) => format!("{name}.{key} is not a key of [{name}]{rest}"),
            None => format!("[{name}]: {message}"),
        }
    })
}

fn to_table<T: Serialize>(value: &T) -> toml::Value {
    toml::Value::try_from(value).expect("a section serialises to TOML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Knobs {
        lambda: f64,
        steps: u64,
    }

    impl Default for Knobs {
        fn default() -> Self {
            Self { lambda: 1.0, steps: 3 }
        }
    }

    fn sections(text: &str) -> Sections {
        Sections::new(text.parse().unwrap())
    }

    #[test]
    fn reads_fill_defaults_and_are_kept_resolved() {
        let mut s = sections("[knobs]\nlambda = 0.5\n");
        assert_eq!(s.read::<Knobs>("knobs").unwrap(), Knobs { lambda: 0.5, steps: 3 });
        assert!(s.was_read("knobs") && !s.was_read("other"));
        assert_eq!(s.resolved()["knobs"]["steps"].as_integer(), Some(3));
        assert_eq!(s.read::<Knobs>("absent").unwrap(), Knobs::default());
    }

    #[test]
    fn unknown_keys_and_non_tables_are_named() {
        let err = sections("[knobs]\nlamda = 0.5\n").read::<Knobs>("knobs").unwrap_err();
        assert!(err.contains("knobs.lamda is not a key of [knobs]"), "{err}");
        let err = sections("knobs = 3\n").read::<Knobs>("knobs").unwrap_err();
        assert!(err.contains("[knobs]"), "{err}");
    }

    #[test]
    fn tagged_sections_drop_the_tag_and_write_it_first() {
        let mut s = sections("[c]\nname = \"x\"\nsteps = 9\n");
        assert_eq!(s.tag("c", "name").unwrap().as_deref(), Some("x"));
        let knobs: Knobs = s.read_tagged("c", "name", "x").unwrap();
        assert_eq!(knobs, Knobs { lambda: 1.0, steps: 9 });
        let resolved = &s.resolved()["c"];
        assert_eq!(resolved.as_table().unwrap().keys().next().map(String::as_str), Some("name"));
        assert!(sections("[c]\nname = 3\n").tag("c", "name").unwrap_err().contains("c.name"));
    }
}
