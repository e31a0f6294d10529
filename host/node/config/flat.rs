//! One table, two structs: a route's or a model's own fields (its name and path, its file)
//! sit in the config file beside its settings, in one flat table, while the code keeps the
//! settings in a struct of their own. Reading the table hands each own field to its reader
//! and every other key to the settings' derived reader, whose rules apply as they are: its
//! defaults, and an unknown key refused with its name. A mistake in any value keeps its
//! field's path (`routes[0].max_concurrency`), as one derived struct's would; serde's
//! `flatten` would lose both.

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess};

/// Reads settings `S` from `map`, except for the keys `own` takes: for each key, `own` is
/// called with the map, and either reads the key's value itself and answers `true`, or
/// answers `false` to leave the key to `S`.
pub(super) fn settings_beside<'de, A, S>(
    map: A,
    own: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<S, A::Error>
where
    A: MapAccess<'de>,
    S: Deserialize<'de>,
{
    S::deserialize(MapAccessDeserializer::new(Beside { map, own }))
}

/// Reads the value of the own field `field` into `slot`; a second one is an error.
pub(super) fn read_own<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    field: &'static str,
    slot: &mut Option<T>,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(field));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

/// The map as the settings' reader sees it: without the keys `own` takes.
struct Beside<A, F> {
    map: A,
    own: F,
}

impl<'de, A, F> MapAccess<'de> for Beside<A, F>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if !(self.own)(&key, &mut self.map)? {
                return seed.deserialize(IntoDeserializer::<A::Error>::into_deserializer(key)).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
