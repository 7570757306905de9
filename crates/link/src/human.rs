//! The TOML/JSON form of [`LinkConfig`]: quantities written with units
//! (`bandwidth = "100Mbit"`, `rtt = "50ms"`), every field optional, unknown
//! fields rejected so that a misspelling is reported rather than ignored.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::{
    format_duration, format_rate, format_size, parse_duration, parse_rate, parse_size,
};
use crate::{LinkConfig, LinkError};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HumanLinkConfig {
    #[serde(alias = "bandwidth_bits_per_s")]
    bandwidth: Option<Rate>,
    rtt: Option<HumanDuration>,
    /// Missing means one bandwidth-delay product of the link as written.
    #[serde(alias = "queue_bytes")]
    queue: Option<Size>,
    jitter: Option<HumanDuration>,
    stall_probability: Option<f64>,
    stall_time: Option<HumanDuration>,
}

impl TryFrom<HumanLinkConfig> for LinkConfig {
    type Error = LinkError;

    fn try_from(human: HumanLinkConfig) -> Result<Self, LinkError> {
        let default = LinkConfig::default();
        let bandwidth_bits_per_s = human
            .bandwidth
            .map_or(default.bandwidth_bits_per_s, |rate| rate.0);
        let rtt = human.rtt.map_or(default.rtt, |rtt| rtt.0);
        let config = LinkConfig {
            bandwidth_bits_per_s,
            rtt,
            queue_bytes: human.queue.map_or_else(
                || LinkConfig::default_queue_bytes(bandwidth_bits_per_s, rtt),
                |size| size.0,
            ),
            jitter: human.jitter.map_or(default.jitter, |jitter| jitter.0),
            stall_probability: human.stall_probability.unwrap_or(default.stall_probability),
            stall_time: human.stall_time.map_or(default.stall_time, |time| time.0),
        };
        config.validate()?;
        Ok(config)
    }
}

impl From<LinkConfig> for HumanLinkConfig {
    fn from(config: LinkConfig) -> Self {
        HumanLinkConfig {
            bandwidth: Some(Rate(config.bandwidth_bits_per_s)),
            rtt: Some(HumanDuration(config.rtt)),
            queue: Some(Size(config.queue_bytes)),
            jitter: Some(HumanDuration(config.jitter)),
            stall_probability: Some(config.stall_probability),
            stall_time: Some(HumanDuration(config.stall_time)),
        }
    }
}

/// Bits per second: text with a unit, or a plain number of bits per second.
struct Rate(u64);
/// Text with a unit only: a bare number could be seconds or milliseconds.
struct HumanDuration(Duration);
/// Bytes: text with a unit, or a plain number of bytes.
struct Size(usize);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor {
            expecting: "a rate such as \"100Mbit\" or \"12.5MB/s\", or a number of bits per second",
            parse: |text| parse_rate(text).map(Rate),
            from_integer: Some(|bits| Some(Rate(bits))),
            _value: PhantomData,
        })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor {
            expecting: "a duration with a unit, such as \"50ms\"",
            parse: |text| parse_duration(text).map(HumanDuration),
            from_integer: None,
            _value: PhantomData,
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor {
            expecting: "a size such as \"640KiB\", or a number of bytes",
            parse: |text| parse_size(text).map(Size),
            from_integer: Some(|bytes| usize::try_from(bytes).ok().map(Size)),
            _value: PhantomData,
        })
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_rate(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_size(self.0))
    }
}

/// Reads a quantity written as text with a unit or, where that is
/// unambiguous, as a plain integer.
struct QuantityVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, LinkError>,
    from_integer: Option<fn(u64) -> Option<T>>,
    _value: PhantomData<T>,
}

impl<'de, T> Visitor<'de> for QuantityVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.parse)(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<T, E> {
        match self
            .from_integer
            .and_then(|from_integer| from_integer(number))
        {
            Some(value) => Ok(value),
            None => Err(E::invalid_type(Unexpected::Unsigned(number), &self)),
        }
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<T, E> {
        match u64::try_from(number) {
            Ok(number) => self.visit_u64(number),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(number), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Scenario {
        link: LinkConfig,
    }

    #[test]
    fn toml_with_units_and_derived_queue() {
        let scenario: Scenario =
            toml::from_str("[link]\nbandwidth = \"1Gbit\"\nrtt = \"200ms\"\n").unwrap();
        let link = scenario.link;
        assert_eq!(link.bandwidth_bits_per_s, 1_000_000_000);
        assert_eq!(link.rtt, Duration::from_millis(200));
        // BDP = 125 MB/s × 200 ms = 25 MB, rounded up to 64 KiB steps.
        assert_eq!(link.queue_bytes, 25_034_752);
        assert_eq!(link.stall_time, LinkConfig::default().stall_time);
    }

    #[test]
    fn every_field_with_units_or_numbers() {
        let text = r#"
            bandwidth = 20000000
            rtt = "10ms"
            queue = 100000
            jitter = "1ms"
            stall_probability = 0.001
            stall_time = "250ms"
        "#;
        let link: LinkConfig = toml::from_str(text).unwrap();
        assert_eq!(
            link,
            LinkConfig {
                bandwidth_bits_per_s: 20_000_000,
                rtt: Duration::from_millis(10),
                queue_bytes: 100_000,
                jitter: Duration::from_millis(1),
                stall_probability: 0.001,
                stall_time: Duration::from_millis(250),
            }
        );
    }

    #[test]
    fn round_trip() {
        let link = LinkConfig {
            bandwidth_bits_per_s: 12_345_678,
            jitter: Duration::from_micros(1500),
            stall_probability: 0.01,
            ..LinkConfig::default()
        };
        let text = toml::to_string(&link).unwrap();
        assert!(text.contains("bandwidth = \"12.345678Mbit\""), "{text}");
        assert_eq!(toml::from_str::<LinkConfig>(&text).unwrap(), link);
    }

    #[test]
    fn bad_input_gets_one_clear_message() {
        let zero = toml::from_str::<LinkConfig>("bandwidth = \"0Mbit\"")
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("invalid link config: bandwidth: must be between"),
            "{zero}"
        );
        let typo = toml::from_str::<LinkConfig>("bandwith = \"10Mbit\"")
            .unwrap_err()
            .to_string();
        assert!(typo.contains("unknown field `bandwith`"), "{typo}");
        let unit = toml::from_str::<LinkConfig>("rtt = 50")
            .unwrap_err()
            .to_string();
        assert!(unit.contains("a duration with a unit"), "{unit}");
        let rate = toml::from_str::<LinkConfig>("bandwidth = \"fast\"")
            .unwrap_err()
            .to_string();
        assert!(rate.contains("cannot read \"fast\" as a rate"), "{rate}");
    }
}
