//! Floats of the state changelog written as the decimals they came as (changelog format 7).
//!
//! Spend, revenue, quantiles and feature samples reach the fold as JSON or Avro numbers with a
//! few decimal places (`344.15`), and most of the changelog's bytes were those values as
//! 8-byte doubles: a plan's lines record held 41 bytes a line, a baseline event 8 bytes a
//! sample. Written as the integer of their digits and the number of places, they take 2 to 4
//! bytes, and a sorted run of samples (the baseline keeps them sorted) as differences, about
//! one byte each (`examples/statebytes.rs`, docs/PERFORMANCE.md).
//!
//! A value is written as a decimal only when reading it back gives the same double bit for
//! bit: the reader computes `m / 10^d` (both exact doubles, so one correctly rounded division,
//! the same on every machine), and the writer checks that this is the value it holds. Anything
//! else (a computed share, -0.0, a NaN, a value past 2^53 in its digits) is written whole.
//!
//! In a human-readable format (the JSON of `snapshot::readable`) both types are plain numbers.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The most decimal places a value is written with; past this it is written whole.
const MAX_PLACES: usize = 14;

/// Powers of ten that are exact doubles, up to [`MAX_PLACES`].
const POW10: [f64; MAX_PLACES + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
];

/// The largest integer of digits written: every integer up to it is an exact double.
const EXACT: i64 = 1 << 53;

/// The first byte of [`Decimals`] written whole, 8 little-endian bytes a value.
const WHOLE: u8 = u8::MAX;

/// The tag of a [`Decimal`] written whole (the others are its places).
const WHOLE_TAG: u128 = 15;

/// The value the digits `m` with `places` decimal places stand for, as the reader computes it.
fn value(m: i64, places: usize) -> f64 {
    m as f64 / POW10[places]
}

/// The digits of `v` with `places` decimal places, when they read back as `v` bit for bit.
fn digits(v: f64, places: usize) -> Option<i64> {
    let x = v * POW10[places];
    if x.is_nan() || x.abs() > EXACT as f64 {
        return None;
    }
    // Rounded half away from zero without `f64::round` (a library call on this target): a sum
    // rounded the wrong way near a half only fails the check below. -0.0 fails it too. From
    // 2^52 on every double is an integer (and adding a half would round to even).
    let m = if x.abs() >= (1u64 << 52) as f64 {
        x as i64
    } else {
        (x + 0.5f64.copysign(x)) as i64
    };
    let fits = |m: i64| value(m, places).to_bits() == v.to_bits();
    if fits(m) {
        return Some(m);
    }
    // From about 2^51 on the product `v * 10^places` can be off by more than a half (by less
    // than one and a half); the neighbours are tried from 2^50 on, to be safe.
    if x.abs() < (1u64 << 50) as f64 {
        return None;
    }
    [m - 1, m + 1]
        .into_iter()
        .find(|&m| m.unsigned_abs() <= EXACT as u64 && fits(m))
}

/// The places [`shortest`] tries first: most values met are money, in cents.
const FIRST_GUESS: usize = 2;

/// The fewest places `v` is written with, and its digits.
///
/// Tried at [`FIRST_GUESS`] places first, which settles it when `v * 10^places` is below 2^50:
/// there every double's rounding interval is narrower than `10^-places`, so at most one
/// integer of digits fits, and the digits of any fewer places, with zeros appended, are that
/// integer (the same rational, below 2^53). So when the guess fits, its trailing zeros are
/// the places it has too many; when it does not, no fewer places fit either. Anything else is
/// searched place by place, as [`shortest_by_search`] does. Tested against it.
fn shortest(v: f64) -> Option<(usize, i64)> {
    if (v * POW10[FIRST_GUESS]).abs() < (1u64 << 50) as f64 {
        let Some(mut m) = digits(v, FIRST_GUESS) else {
            return (FIRST_GUESS + 1..=MAX_PLACES)
                .find_map(|places| digits(v, places).map(|m| (places, m)));
        };
        let mut places = FIRST_GUESS;
        while places > 0 && m % 10 == 0 {
            m /= 10;
            places -= 1;
        }
        return Some((places, m));
    }
    shortest_by_search(v)
}

/// The fewest places `v` is written with, and its digits, trying 0, 1, 2, ... places.
fn shortest_by_search(v: f64) -> Option<(usize, i64)> {
    (0..=MAX_PLACES).find_map(|places| digits(v, places).map(|m| (places, m)))
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    (z >> 1) as i64 ^ -((z & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push(x as u8 | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// A LEB128 varint of at most 64 bits from the front of `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        let part = u64::from(b & 0x7f);
        if shift == 63 && part > 1 {
            return None;
        }
        x |= part << shift;
        if b & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

/// `values` as decimals with one number of places for all: that byte, then the differences of
/// consecutive digits (zigzag varints); or [`WHOLE`] and the doubles.
fn encode(values: &[f64], out: &mut Vec<u8>) {
    let start = out.len();
    let mut places = values
        .first()
        .and_then(|&v| shortest(v))
        .map_or(0, |(p, _)| p);
    'places: loop {
        out.truncate(start);
        out.push(places as u8);
        let mut previous = 0i64;
        for &v in values {
            // A value with fewer places than those found so far is the same decimal with
            // trailing zeros; one with more makes them the places of all.
            match digits(v, places) {
                Some(m) => {
                    put_varint(out, zigzag(m - previous));
                    previous = m;
                }
                None => match shortest(v) {
                    Some((more, _)) if more > places => {
                        places = more;
                        continue 'places;
                    }
                    // Not a decimal, or its digits past 2^53 at these places.
                    _ => {
                        out.truncate(start);
                        out.push(WHOLE);
                        for v in values {
                            out.extend_from_slice(&v.to_le_bytes());
                        }
                        return;
                    }
                },
            }
        }
        return;
    }
}

fn decode(bytes: &[u8]) -> Option<Vec<f64>> {
    let (&first, mut rest) = bytes.split_first()?;
    if first == WHOLE {
        let chunks = rest.chunks_exact(8);
        if !chunks.remainder().is_empty() {
            return None;
        }
        return Some(
            chunks
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        );
    }
    let places = usize::from(first);
    if places > MAX_PLACES {
        return None;
    }
    let mut values = Vec::with_capacity(rest.len());
    let mut m = 0i64;
    while !rest.is_empty() {
        m = m.checked_add(unzigzag(take_varint(&mut rest)?))?;
        if m.unsigned_abs() > EXACT as u64 {
            return None;
        }
        values.push(value(m, places));
    }
    Some(values)
}

thread_local! {
    /// Where a run of values is encoded before the serializer copies it.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn serialize_values<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        return values.serialize(serializer);
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        encode(values, buf);
        serializer.serialize_bytes(buf)
    })
}

/// A run of floats (a line's quantile values, a feature's kept samples), written as bytes:
/// see the module's documentation.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Decimals(pub Vec<f64>);

impl AsRef<[f64]> for Decimals {
    fn as_ref(&self) -> &[f64] {
        &self.0
    }
}

/// [`Decimals`] written from a borrowed slice.
pub(crate) struct DecimalsRef<'a>(pub &'a [f64]);

impl Serialize for Decimals {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_values(&self.0, serializer)
    }
}

impl Serialize for DecimalsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_values(self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for Decimals {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl Visitor<'_> for Bytes {
            type Value = Decimals;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("floats as decimals")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Decimals, E> {
                decode(bytes)
                    .map(Decimals)
                    .ok_or_else(|| E::custom("floats as decimals cut short or malformed"))
            }
        }
        if deserializer.is_human_readable() {
            Vec::deserialize(deserializer).map(Decimals)
        } else {
            deserializer.deserialize_bytes(Bytes)
        }
    }
}

/// One float (a planned spend, a reported revenue), written as a varint: the zigzag digits
/// shifted by four bits over the places, or the double's bits over the tag 15.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decimal(pub f64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return serializer.serialize_f64(self.0);
        }
        let word = match shortest(self.0) {
            Some((places, m)) => u128::from(zigzag(m)) << 4 | places as u128,
            None => u128::from(self.0.to_bits()) << 4 | WHOLE_TAG,
        };
        serializer.serialize_u128(word)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return f64::deserialize(deserializer).map(Decimal);
        }
        let word = u128::deserialize(deserializer)?;
        let payload =
            u64::try_from(word >> 4).map_err(|_| de::Error::custom("decimal too wide"))?;
        let v = match word & 15 {
            WHOLE_TAG => f64::from_bits(payload),
            places => {
                let m = unzigzag(payload);
                if m.unsigned_abs() > EXACT as u64 {
                    return Err(de::Error::custom("decimal digits past 2^53"));
                }
                value(m, places as usize)
            }
        };
        Ok(Decimal(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(values: &[f64]) -> Vec<u8> {
        let bytes = postcard::to_stdvec(&DecimalsRef(values)).unwrap();
        let back: Decimals = postcard::from_bytes(&bytes).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.0), bits(values), "{values:?}");
        for &v in values {
            let one = postcard::to_stdvec(&Decimal(v)).unwrap();
            let back: Decimal = postcard::from_bytes(&one).unwrap();
            assert_eq!(back.0.to_bits(), v.to_bits(), "{v:?}");
        }
        bytes
    }

    #[test]
    fn decimals_take_a_few_bytes_and_read_back_bit_for_bit() {
        // A line's three quantiles: length, places, three varints of 3 bytes (the digits,
        // then differences of 13,129 and 15,312).
        assert_eq!(
            round_trip(&[789.73, 921.02, 1074.14]).len(),
            1 + 1 + 3 + 3 + 3
        );
        // Sorted samples 37 cents apart (as a decoder reads "100.37"): a byte each.
        let samples: Vec<f64> = (0..200)
            .map(|i| f64::from(10_000 + 37 * i) / 100.0)
            .collect();
        assert_eq!(round_trip(&samples).len(), 2 + 1 + 3 + 199);
        // Fewer places than the others, whole numbers, negatives, zero: places 3, then
        // differences of 1,500, 750, 750, -7,125 and 4,125, two bytes each.
        assert_eq!(round_trip(&[1.5, 2.25, 3.0, -4.125, 0.0]).len(), 1 + 1 + 10);
        assert_eq!(postcard::to_stdvec(&Decimal(344.15)).unwrap().len(), 3);
        assert_eq!(round_trip(&[]).len(), 2);
    }

    #[test]
    fn what_is_not_a_short_decimal_is_written_whole() {
        let odd = [
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7ff0_0000_dead_beef),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE / 3.0,
            1.0 / 3.0,
            1e300,
            9_007_199_254_740_994.0,
            0.1 + 0.2,
        ];
        for v in odd {
            let bytes = round_trip(&[1.25, v]);
            assert_eq!(bytes[1], WHOLE, "{v:?}");
            assert_eq!(bytes.len(), 2 + 16, "{v:?}");
        }
        assert_eq!(postcard::to_stdvec(&Decimal(1.0 / 3.0)).unwrap().len(), 10);
    }

    #[test]
    fn the_first_guess_agrees_with_the_search_on_edges() {
        let bound = (1u64 << 50) as f64 / POW10[FIRST_GUESS];
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            10.0,
            1e4,
            0.1,
            0.0001,
            0.00001,
            123.456_78,
            344.15,
            1e-300,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NAN,
            f64::INFINITY,
            bound,
            -bound,
        ];
        // Around the guess's bound, and past it (where `shortest` is the search) around the
        // digits' bound.
        for v in [bound, -bound, 1e11, EXACT as f64, 1e15] {
            let mut below = v;
            for _ in 0..64 {
                below = f64::from_bits(below.to_bits() - 1);
                values.extend([
                    below,
                    f64::from_bits(v.to_bits() + (v.to_bits() - below.to_bits())),
                ]);
            }
        }
        for v in values {
            assert_eq!(shortest(v), shortest_by_search(v), "{v:?}");
        }
        assert_eq!(shortest(344.15), Some((2, 34415)));
        assert_eq!(shortest(-1200.0), Some((0, -1200)));
        assert_eq!(shortest(0.000_012_5), Some((7, 125)));
    }

    #[test]
    fn malformed_bytes_are_refused() {
        let refused = |bytes: &[u8]| postcard::from_bytes::<Decimals>(bytes).is_err();
        assert!(refused(&[0])); // no places byte
        assert!(refused(&[2, 2, 0x80])); // a varint cut short
        assert!(refused(&[8, WHOLE, 1, 2, 3, 4, 5, 6, 7])); // not whole doubles
        assert!(refused(&[2, 99, 1])); // too many places
                                       // Digits past 2^53.
        let mut big = vec![0, 2];
        put_varint(&mut big, zigzag(EXACT + 1));
        big[0] = (big.len() - 1) as u8;
        assert!(refused(&big));
        // A varint whose tenth byte holds more than the 64th bit.
        let mut wide = vec![0, 2];
        wide.extend([0xff; 9]);
        wide.push(0x02);
        wide[0] = (wide.len() - 1) as u8;
        assert!(refused(&wide));
        // Differences that add up past i64.
        let mut sum = vec![0, 2];
        put_varint(&mut sum, zigzag(EXACT));
        put_varint(&mut sum, zigzag(i64::MAX));
        sum[0] = (sum.len() - 1) as u8;
        assert!(refused(&sum));
        let decimal =
            |word: u128| postcard::from_bytes::<Decimal>(&postcard::to_stdvec(&word).unwrap());
        assert!(decimal(u128::from(zigzag(EXACT + 1)) << 4 | 2).is_err());
        assert!(decimal(u128::from(zigzag(-EXACT - 1)) << 4 | 2).is_err());
        assert!(decimal(1 << 100).is_err());
        assert_eq!(
            decimal(u128::from(zigzag(-EXACT)) << 4).unwrap().0,
            -(EXACT as f64)
        );
    }

    #[test]
    fn as_json_they_are_plain_numbers() {
        assert_eq!(
            serde_json::to_string(&(Decimal(1.5), Decimals(vec![2.25, 3.0]))).unwrap(),
            "[1.5,[2.25,3.0]]"
        );
        let (d, v): (Decimal, Decimals) = serde_json::from_str("[1.5,[2.25,3.0]]").unwrap();
        assert_eq!((d.0, v.0), (1.5, vec![2.25, 3.0]));
    }

    proptest! {
        #[test]
        fn any_floats_read_back_bit_for_bit(
            values in prop::collection::vec(
                prop_oneof![
                    any::<f64>(),
                    (-10_000_000i64..10_000_000, 0u32..7)
                        .prop_map(|(m, d)| m as f64 / 10f64.powi(d as i32)),
                    (0u64..u64::MAX).prop_map(f64::from_bits),
                ],
                0..40,
            )
        ) {
            round_trip(&values);
        }

        #[test]
        fn runs_of_decimals_with_mixed_places_stay_short(
            run in prop::collection::vec((-1_000_000_000i64..1_000_000_000, 0usize..7), 1..300)
        ) {
            let values: Vec<f64> = run.iter().map(|&(m, d)| value(m, d)).collect();
            round_trip(&values);
            // The encoding itself: postcard's length before it takes two bytes past 127.
            let mut bytes = Vec::new();
            encode(&values, &mut bytes);
            prop_assert_ne!(bytes[0], WHOLE, "{:?} written whole", values);
        }

        #[test]
        fn the_first_guess_finds_what_the_search_finds(
            v in prop_oneof![
                any::<f64>(),
                (0u64..u64::MAX).prop_map(f64::from_bits),
                (-EXACT..=EXACT, 0usize..=MAX_PLACES).prop_map(|(m, d)| value(m, d)),
                (-1_000_000_000i64..1_000_000_000, 0usize..8).prop_map(|(m, d)| value(m, d)),
                // Around the guess's bound of 2^50 and the digits' of 2^53.
                ((1i64 << 46)..(1i64 << 54), 0usize..=MAX_PLACES, any::<bool>())
                    .prop_map(|(m, d, neg)| value(if neg { -m } else { m }, d) ),
                ((1u64 << 49)..(1u64 << 51), any::<bool>()).prop_map(|(x, neg)| {
                    let v = x as f64 / POW10[FIRST_GUESS];
                    if neg { -v } else { v }
                }),
                (-1e6f64..1e6, 1u32..20).prop_map(|(v, n)| v / f64::from(n)),
            ]
        ) {
            prop_assert_eq!(shortest(v), shortest_by_search(v), "{:?} ({:#x})", v, v.to_bits());
        }

        #[test]
        fn large_digits_stay_short(m in (1i64 << 49)..EXACT, d in 0usize..5, negative: bool) {
            let v = value(if negative { -m } else { m }, d);
            let bytes = round_trip(&[v]);
            prop_assert_ne!(bytes[1], WHOLE, "{:?} written whole", v);
        }

        #[test]
        fn decimals_as_parsed_from_text_stay_short(m in -1_000_000_000i64..1_000_000_000, d in 0usize..7) {
            // The double a JSON decoder makes of the text `m / 10^d`.
            let text = format!("{}{}.{:0>width$}", if m < 0 { "-" } else { "" },
                m.unsigned_abs() / 10u64.pow(d as u32), m.unsigned_abs() % 10u64.pow(d as u32), width = d);
            let v: f64 = text.trim_end_matches('.').parse().unwrap();
            let bytes = round_trip(&[v]);
            prop_assert_ne!(bytes[1], WHOLE, "{} written whole", text);
        }
    }
}
