//! A fast path for the plainest JSON payloads, the ones producers actually write: an object of
//! the topic's fields, each at most once, strings without escapes, numbers of at most 19
//! significant digits. For anything else it returns `None` and `decode_json` hands the record
//! to serde_json, whose answer, the event or the error, is the authority.
//!
//! Measured under callgrind (docs/PERFORMANCE.md), serde_json spent about 4,000 instructions on
//! a plan line, 1,650 of them on its quantiles map and about 240 on each float; read directly, a
//! string value is scanned eight bytes a step, a usual number is converted from the word or two
//! that hold it, and a key in the place producers usually put it, with its colon, is recognised
//! by a compare of one or two words and names its field without being compared again. The fast
//! path must never accept a record serde_json refuses, nor decode one to a different value: the
//! tests feed both the same random events and byte-level mutations of them and compare, and
//! hold the word-wise scan to a byte-wise one.
//!
//! Numbers follow JSON's grammar (no leading `+` or zeros, digits on both sides of the point)
//! and round correctly, as serde_json's do with `float_roundtrip` (see [`Json::number`]).

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use compact_str::CompactString;
use smallvec::SmallVec;

use crate::event::validate::MAX_FORECAST_LINES;
use crate::event::{
    fast_date, fast_rfc3339, parse_quantile_key, Event, FeatureImportance, Forecast, ForecastLine,
    Outcome, Quantiles, Topic,
};

/// The event `text` holds, when it is in the plain form; `None` leaves it to serde_json.
pub(super) fn decode(topic: Topic, text: &str) -> Option<Event> {
    let mut json = Json::new(text);
    let event = match topic {
        Topic::Outcomes => Event::Outcome(json.outcome()?),
        Topic::Forecasts => Event::Forecast(json.forecast()?),
        Topic::FeatureImportances => Event::FeatureImportance(json.importance()?),
    };
    json.skip_whitespace();
    (json.at == text.len()).then_some(event)
}

/// A key as producers usually write it, `"name":`, the field `F` it names, and the words that
/// recognise it: its first eight bytes (`mask` selects those of a shorter key) and, past eight,
/// its last eight.
pub(super) struct Known<F> {
    name: &'static str,
    field: F,
    len: usize,
    head: u64,
    mask: u64,
    tail: u64,
}

impl<F: Copy> Known<F> {
    /// `name` (at most 13 bytes, without quotes, backslashes or control characters: checked
    /// when the constant is built), quoted and followed by the colon, naming `field`.
    const fn new(name: &'static str, field: F) -> Known<F> {
        let bytes = name.as_bytes();
        let len = bytes.len() + 3;
        assert!(len <= 16);
        let (mut head, mut tail, mut i) = (0u64, 0u64, 0);
        while i < len {
            let byte = if i == 0 || i == len - 2 {
                b'"'
            } else if i == len - 1 {
                b':'
            } else {
                bytes[i - 1]
            };
            assert!(byte >= 0x20 && byte != b'\\' && (byte != b'"' || i == 0 || i == len - 2));
            if i < 8 {
                head |= (byte as u64) << (8 * i);
            }
            if len > 8 && i >= len - 8 {
                tail |= (byte as u64) << (8 * (i + 8 - len));
            }
            i += 1;
        }
        let mask = if len >= 8 {
            u64::MAX
        } else {
            (1 << (8 * len)) - 1
        };
        Known {
            name,
            field,
            len,
            head,
            mask,
            tail,
        }
    }
}

/// A JSON reader over valid UTF-8 (the caller checked it) that gives up, with `None`, at the
/// first thing it does not read plainly.
pub(super) struct Json<'a> {
    text: &'a str,
    at: usize,
}

/// Stores a field's value; `None` when the field was already given (serde_json's "duplicate
/// field" error, or a map's last-wins: either way serde_json decides).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// The index of the first quote, backslash or control character in `bytes`, which ends a
/// plain string: eight bytes a step, each word tested for all three at once with the
/// subtracting tests of "Bit Twiddling Hacks" (`haszero` after xor with the quote or the
/// backslash, `hasless` than 0x20); a borrow can only mark bytes after the first true one, so
/// the lowest mark is exact. Bytes of multi-byte characters (0x80 and above) never match.
pub(super) fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let marks = zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS);
        if marks != 0 {
            return Some(at + (marks.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// The powers of ten a double holds exactly.
const POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The bytes of a little-endian word that are not ASCII digits, each marked by its high bit.
#[inline]
fn non_digits(word: u64) -> u64 {
    const LOWS: u64 = u64::from_ne_bytes([0x7F; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A digit becomes 0 to 9; adding 0x76 to the low seven bits of a byte carries into its
    // high bit exactly when they are 10 or more (and never into the next byte).
    let x = word ^ u64::from_ne_bytes([b'0'; 8]);
    (((x & LOWS) + u64::from_ne_bytes([0x76; 8])) | x) & HIGHS
}

/// How many ASCII digits `word` starts with (its lowest bytes first), 0 to 8.
#[inline]
fn leading_digits(word: u64) -> usize {
    (non_digits(word).trailing_zeros() / 8) as usize
}

/// The integer the first `n` (1 to 7) bytes of `word` spell, all of them ASCII digits: the
/// eight-digit conversion of "Fast numeric string to int" (Lemire), the digits moved to the top
/// of the word so that zeros lead.
#[inline]
fn digits_value(word: u64, n: usize) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let v = (word ^ u64::from_ne_bytes([b'0'; 8])) << (8 * (8 - n));
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    ((v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))
        >> 32)
        & 0xFFFF_FFFF
}

/// The usual number at `at` in `bytes`, as [`Json::number_digit_by_digit`] reads it, and where
/// it ends: an optional minus, one to seven digits (no leading zero), and optionally a point and
/// one to seven digits, with no exponent. Eight bytes are read at a time; `None` for any other
/// number, or where fewer than eight bytes follow the sign (or, for a number that does not end
/// within its first word, the point), leaves it to the digit-by-digit reading. Prices and counts (`921.02`, `1074.14`) are nearly every number
/// producers write, and reading their digits one at a time was most of decoding them. A number
/// that ends within its first word (`1074.14,`) has its point taken out of the word and its
/// digits converted at once; a longer one reads a second word for the digits after the point.
#[inline(always)]
fn short_decimal(bytes: &[u8], at: usize) -> Option<(f64, usize)> {
    let word_at = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
    };
    let first = word_at(at)?;
    let negative = first as u8 == b'-';
    let (at, word) = if negative {
        (at + 1, word_at(at + 1)?)
    } else {
        (at, first)
    };
    let signed = |magnitude: f64| if negative { -magnitude } else { magnitude };
    // At most 14 digits: an exact double (converted from an i64, one instruction), divided by an
    // exact power of ten, as the general reading does.
    let exact = |digits: u64| digits as i64 as f64;
    let marks = non_digits(word);
    let whole = (marks.trailing_zeros() / 8) as usize;
    if whole == 0 || whole == 8 || (whole > 1 && word as u8 == b'0') {
        return None;
    }
    // The byte after the digits (in the word just read, as they are fewer than eight); `e` or
    // `E` is an exponent: not this reading's.
    let after = (word >> (8 * whole)) as u8;
    let is_exponent = |b: u8| b | 0x20 == b'e';
    if after != b'.' {
        if is_exponent(after) {
            return None;
        }
        return Some((signed(exact(digits_value(word, whole))), at + whole));
    }
    // Where the digits after the point end, when they end within this word.
    let end = ((marks & !(0x80 << (8 * whole))).trailing_zeros() / 8) as usize;
    if end < 8 {
        let fraction = end - whole - 1;
        if fraction == 0 || is_exponent((word >> (8 * end)) as u8) {
            return None;
        }
        // The digits before the point, then those after it moved down over it.
        let before = (1u64 << (8 * whole)) - 1;
        let digits = (word & before) | ((word >> 8) & !before);
        let magnitude = exact(digits_value(digits, end - 1)) / POWERS[fraction];
        return Some((signed(magnitude), at + end));
    }
    let point = at + whole;
    let tail = word_at(point + 1)?;
    let fraction = leading_digits(tail);
    if fraction == 0 || fraction == 8 || is_exponent((tail >> (8 * fraction)) as u8) {
        return None;
    }
    const TENS: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];
    let significand = digits_value(word, whole) * TENS[fraction] + digits_value(tail, fraction);
    let magnitude = exact(significand) / POWERS[fraction];
    Some((signed(magnitude), point + 1 + fraction))
}

impl<'a> Json<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Json { text, at: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let b = *self.bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// A string without escapes or control characters.
    #[inline]
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let rest = &self.bytes()[start..];
        let len = string_end(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        let end = start + len;
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// The key at the reader and the colon right after it, when they are `key`'s, consumed;
    /// `None`, with nothing consumed but whitespace, otherwise. The same key [`Json::string`]
    /// would read, recognised by comparing a word or two.
    fn known_key<F: Copy>(&mut self, key: &Known<F>) -> Option<F> {
        self.skip_whitespace();
        let rest = self.bytes().get(self.at..self.at + 16)?;
        let word = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().unwrap_or([0; 8]));
        let found =
            (word(0) ^ key.head) & key.mask == 0 && (key.len <= 8 || word(key.len - 8) == key.tail);
        if !found {
            return None;
        }
        self.at += key.len;
        Some(key.field)
    }

    fn compact(&mut self) -> Option<CompactString> {
        self.string().map(CompactString::from)
    }

    /// A date string, `"YYYY-MM-DD"`. Its twelve bytes are read where they are, without the
    /// scan for the string's end: when the ten between the quotes make a date they hold no quote,
    /// backslash or control character, so the string is those ten.
    fn date(&mut self) -> Option<NaiveDate> {
        let quoted = self.bytes().get(self.at..self.at + 12);
        if let Some(date) = quoted
            .filter(|q| q[0] == b'"' && q[11] == b'"')
            .and_then(|q| fast_date(&q[1..11]))
        {
            self.at += 12;
            return Some(date);
        }
        fast_date(self.string()?.as_bytes())
    }

    fn time(&mut self) -> Option<DateTime<FixedOffset>> {
        fast_rfc3339(self.string()?.as_bytes())
    }

    /// `null`, consumed; false (and nothing consumed but whitespace) for anything else.
    fn null(&mut self) -> bool {
        self.skip_whitespace();
        let found = self.bytes()[self.at..].starts_with(b"null");
        if found {
            self.at += 4;
        }
        found
    }

    fn optional_string(&mut self) -> Option<Option<String>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(|s| Some(s.to_owned()))
    }

    /// A JSON number of at most 19 significant digits, as the nearest double; `None` for
    /// anything outside JSON's grammar and for results that are infinite or flushed to zero.
    ///
    /// The usual number (at most 2^53 as an integer of its digits, at most 22 places from the
    /// point) is that integer times or over an exact power of ten, one correctly rounded
    /// operation (Clinger's fast path); any other goes to the standard library's parser.
    #[inline]
    pub(super) fn number(&mut self) -> Option<f64> {
        match short_decimal(self.bytes(), self.at) {
            Some((value, end)) => {
                self.at = end;
                Some(value)
            }
            None => self.number_past_whitespace(),
        }
    }

    /// [`Json::number`] after whitespace, or any number [`short_decimal`] leaves (kept out of
    /// line, so that the usual number is read where it is asked for).
    #[inline(never)]
    fn number_past_whitespace(&mut self) -> Option<f64> {
        self.skip_whitespace();
        match short_decimal(self.bytes(), self.at) {
            Some((value, end)) => {
                self.at = end;
                Some(value)
            }
            None => self.number_digit_by_digit(),
        }
    }

    /// [`Json::number`] read a digit at a time: every number, the ones
    /// [`short_decimal`] leaves included. The reader is past any whitespace.
    pub(super) fn number_digit_by_digit(&mut self) -> Option<f64> {
        let bytes = self.bytes();
        let start = self.at;
        let mut at = start;
        let negative = bytes.get(at) == Some(&b'-');
        at += usize::from(negative);
        let mut significand = 0u64;
        let mut digits = |at: &mut usize| {
            let from = *at;
            while let Some(&b @ b'0'..=b'9') = bytes.get(*at) {
                significand = significand
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(b - b'0'));
                *at += 1;
            }
            *at - from
        };
        let whole = digits(&mut at);
        if whole == 0 || (whole > 1 && bytes[at - whole] == b'0') {
            return None;
        }
        let mut fraction = 0;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            fraction = digits(&mut at);
            if fraction == 0 {
                return None;
            }
        }
        // Up to 19 digits cannot overflow the u64; past that only the significant ones count.
        if whole + fraction > 19 {
            let significant = bytes[start..at]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .skip_while(|&&b| b == b'0')
                .count();
            if significant > 19 {
                return None;
            }
            significand = u64::MAX;
        }
        let mut exponent = -(fraction as i32);
        let mut plain = true;
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            let sign = match bytes.get(at) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            at += usize::from(sign != 0);
            let from = at;
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            match self.text.get(from..at)?.parse::<i32>() {
                Ok(e) if at - from <= 4 => exponent += if sign < 0 { -e } else { e },
                _ if at > from => plain = false,
                _ => return None,
            }
        }
        const EXACT: u64 = 1 << 53;
        let value = match POWERS.get(exponent.unsigned_abs() as usize) {
            Some(&power) if plain && significand <= EXACT => {
                let magnitude = if exponent < 0 {
                    significand as f64 / power
                } else {
                    significand as f64 * power
                };
                if negative {
                    -magnitude
                } else {
                    magnitude
                }
            }
            _ => {
                let value: f64 = self.text.get(start..at)?.parse().ok()?;
                let zero = bytes[start..at]
                    .iter()
                    .take_while(|b| !matches!(b, b'e' | b'E'))
                    .all(|b| matches!(b, b'0' | b'-' | b'.'));
                if !value.is_finite() || (value == 0.0 && !zero) {
                    return None;
                }
                value
            }
        };
        self.at = at;
        Some(value)
    }

    fn optional_number(&mut self) -> Option<Option<f64>> {
        if self.null() {
            return Some(None);
        }
        self.number().map(Some)
    }

    /// Reads an object of fields, calling `field` with the field each key names and the reader
    /// at its value; `None` for a key that names none. `usual` lists the fields' keys in the
    /// order producers usually write them: while the keys come in that order each is recognised
    /// by comparing one or two words instead of being scanned and compared (the first other key
    /// and all after it are read as strings and looked up, so the order changes nothing but the
    /// speed).
    fn object<F: Copy>(
        &mut self,
        usual: &[Known<F>],
        field: impl FnMut(&mut Self, F) -> Option<()>,
    ) -> Option<()> {
        let look_up = |name: &str| usual.iter().find(|k| k.name == name).map(|k| k.field);
        self.entries(usual, look_up, field)
    }

    /// Reads an object whose keys are names (a map), calling `entry` with each name and the
    /// reader at its value.
    fn map(&mut self, entry: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.entries(&[], Some, entry)
    }

    /// Reads an object, calling `entry` with what `name` makes of each key (`None` refuses the
    /// object) and the reader at its value; keys in the order of `usual` are recognised by
    /// their words and give the `Known`'s own `F`.
    fn entries<F: Copy>(
        &mut self,
        usual: &[Known<F>],
        name: impl Fn(&'a str) -> Option<F>,
        mut entry: impl FnMut(&mut Self, F) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.bytes().get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(());
        }
        let mut next = usual.iter();
        loop {
            let key = match next.next().and_then(|key| self.known_key(key)) {
                Some(key) => key,
                None => {
                    next = [].iter();
                    let key = name(self.string()?)?;
                    self.expect(b':')?;
                    key
                }
            };
            entry(self, key)?;
            match self.next()? {
                b',' => continue,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Reads an array, calling `item` with the reader at each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        self.skip_whitespace();
        if self.bytes().get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.next()? {
                b',' => continue,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    fn outcome(&mut self) -> Option<Outcome> {
        let (mut tenant, mut date, mut channel, mut campaign_id) = (None, None, None, None);
        let (mut spend, mut revenue, mut source, mut observed_at) = (None, None, None, None);
        #[derive(Clone, Copy)]
        enum Field {
            Tenant,
            Date,
            Channel,
            CampaignId,
            Spend,
            Revenue,
            Source,
            ObservedAt,
        }
        const USUAL: [Known<Field>; 8] = [
            Known::new("tenant", Field::Tenant),
            Known::new("date", Field::Date),
            Known::new("channel", Field::Channel),
            Known::new("campaign_id", Field::CampaignId),
            Known::new("spend", Field::Spend),
            Known::new("revenue", Field::Revenue),
            Known::new("source", Field::Source),
            Known::new("observed_at", Field::ObservedAt),
        ];
        self.object(&USUAL, |json, field| match field {
            Field::Tenant => set(&mut tenant, json.compact()?),
            Field::Date => set(&mut date, json.date()?),
            Field::Channel => set(&mut channel, json.compact()?),
            Field::CampaignId => set(&mut campaign_id, json.compact()?),
            Field::Spend => set(&mut spend, json.number()?),
            Field::Revenue => set(&mut revenue, json.number()?),
            Field::Source => set(&mut source, json.compact()?),
            Field::ObservedAt => {
                let time = if json.null() {
                    None
                } else {
                    Some(json.time()?.with_timezone(&Utc))
                };
                set(&mut observed_at, time)
            }
        })?;
        Some(Outcome {
            tenant: tenant?,
            date: date?,
            channel: channel?,
            campaign_id: campaign_id.unwrap_or_default(),
            spend: spend?,
            revenue: revenue?,
            source: source.unwrap_or_else(crate::event::default_source),
            observed_at: observed_at.flatten(),
        })
    }

    fn forecast(&mut self) -> Option<Forecast> {
        let (mut tenant, mut plan_id, mut model_version) = (None, None, None);
        let (mut issued_at, mut lines) = (None, None);
        #[derive(Clone, Copy)]
        enum Field {
            Tenant,
            PlanId,
            ModelVersion,
            IssuedAt,
            Lines,
        }
        const USUAL: [Known<Field>; 5] = [
            Known::new("tenant", Field::Tenant),
            Known::new("plan_id", Field::PlanId),
            Known::new("model_version", Field::ModelVersion),
            Known::new("issued_at", Field::IssuedAt),
            Known::new("lines", Field::Lines),
        ];
        self.object(&USUAL, |json, field| match field {
            Field::Tenant => set(&mut tenant, json.compact()?),
            Field::PlanId => set(&mut plan_id, json.compact()?),
            Field::ModelVersion => set(&mut model_version, json.optional_string()?),
            Field::IssuedAt => set(&mut issued_at, json.time()?),
            Field::Lines => {
                // Room, after the first line, for as many more as the rest of the text would
                // hold at its length (at most the lines validation allows): one allocation for
                // a plan of similar lines, where doubling copied each plan's lines about twice.
                let mut read = Vec::new();
                json.array(|json| {
                    let from = json.at;
                    read.push(json.line()?);
                    if read.len() == 1 {
                        let rest = json.text.len() - json.at;
                        let more = rest / (json.at - from).max(1);
                        read.reserve(more.min(MAX_FORECAST_LINES));
                    }
                    Some(())
                })?;
                set(&mut lines, read)
            }
        })?;
        Some(Forecast {
            tenant: tenant?,
            plan_id: plan_id?,
            model_version: model_version.flatten(),
            issued_at: issued_at?,
            lines: lines?,
        })
    }

    fn line(&mut self) -> Option<ForecastLine> {
        let (mut date, mut channel, mut campaign_id) = (None, None, None);
        let (mut spend, mut revenue) = (None, None);
        #[derive(Clone, Copy)]
        enum Field {
            Date,
            Channel,
            CampaignId,
            Spend,
            Revenue,
        }
        const USUAL: [Known<Field>; 5] = [
            Known::new("date", Field::Date),
            Known::new("channel", Field::Channel),
            Known::new("campaign_id", Field::CampaignId),
            Known::new("spend", Field::Spend),
            Known::new("revenue", Field::Revenue),
        ];
        self.object(&USUAL, |json, field| match field {
            Field::Date => set(&mut date, json.date()?),
            Field::Channel => set(&mut channel, json.compact()?),
            Field::CampaignId => set(&mut campaign_id, json.compact()?),
            Field::Spend => set(&mut spend, json.optional_number()?),
            Field::Revenue => set(&mut revenue, json.quantiles()?),
        })?;
        Some(ForecastLine {
            date: date?,
            channel: channel?,
            campaign_id: campaign_id.unwrap_or_default(),
            spend: spend.flatten(),
            revenue: revenue?,
        })
    }

    pub(super) fn quantiles(&mut self) -> Option<Quantiles> {
        let mut pairs: SmallVec<[(u8, f64); 3]> = SmallVec::new();
        // The keys name quantile levels: `p10` is 10.
        const USUAL: [Known<u8>; 3] = [
            Known::new("p10", 10),
            Known::new("p50", 50),
            Known::new("p90", 90),
        ];
        self.entries(&USUAL, parse_quantile_key, |json, level| {
            if pairs.iter().any(|&(l, _)| l == level) {
                return None;
            }
            pairs.push((level, json.number()?));
            Some(())
        })?;
        pairs.sort_by_key(|&(level, _)| level);
        Some(Quantiles(pairs))
    }

    fn importance(&mut self) -> Option<FeatureImportance> {
        let (mut tenant, mut model_version, mut computed_at) = (None, None, None);
        let (mut method, mut importances, mut samples) = (None, None, None);
        #[derive(Clone, Copy)]
        enum Field {
            Tenant,
            ModelVersion,
            ComputedAt,
            Method,
            Importances,
            Samples,
        }
        const USUAL: [Known<Field>; 6] = [
            Known::new("tenant", Field::Tenant),
            Known::new("model_version", Field::ModelVersion),
            Known::new("computed_at", Field::ComputedAt),
            Known::new("method", Field::Method),
            Known::new("importances", Field::Importances),
            Known::new("samples", Field::Samples),
        ];
        self.object(&USUAL, |json, field| match field {
            Field::Tenant => set(&mut tenant, json.compact()?),
            Field::ModelVersion => set(&mut model_version, json.optional_string()?),
            Field::ComputedAt => set(&mut computed_at, json.time()?.with_timezone(&Utc)),
            Field::Method => set(&mut method, json.optional_string()?),
            Field::Importances => {
                let mut read = BTreeMap::new();
                json.map(
                    |json, name| match read.insert(name.to_owned(), json.number()?) {
                        Some(_) => None,
                        None => Some(()),
                    },
                )?;
                set(&mut importances, read)
            }
            Field::Samples => {
                let mut read = BTreeMap::new();
                json.map(|json, name| {
                    let mut values = Vec::new();
                    json.array(|json| {
                        values.push(json.number()?);
                        Some(())
                    })?;
                    match read.insert(name.to_owned(), values) {
                        Some(_) => None,
                        None => Some(()),
                    }
                })?;
                set(&mut samples, read)
            }
        })?;
        Some(FeatureImportance {
            tenant: tenant?,
            model_version: model_version.flatten(),
            computed_at: computed_at?,
            method: method.flatten(),
            importances: importances?,
            samples: samples.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// The eight-bytes-at-a-time reading gives what reading a digit at a time gives, value
        /// (to the bit), end and refusal alike, whatever follows the number and however close
        /// to the end of the text it is.
        #[test]
        fn short_decimals_read_as_digit_by_digit(
            text in r"-?[0-9]{0,9}(\.[0-9]{0,9})?([eE][+-]?[0-9]{0,3})?[-.,}\] xeE0-9]{0,10}"
        ) {
            let mut word_wise = Json::new(&text);
            let mut digit_wise = Json::new(&text);
            digit_wise.skip_whitespace();
            let a = word_wise.number().map(|v| (v.to_bits(), word_wise.at));
            let b = digit_wise.number_digit_by_digit().map(|v| (v.to_bits(), digit_wise.at));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn non_digits_marks_every_byte_that_is_not_a_digit(bytes in any::<[u8; 8]>()) {
            let marks = non_digits(u64::from_le_bytes(bytes));
            for (i, b) in bytes.iter().enumerate() {
                prop_assert_eq!(marks >> (8 * i + 7) & 1 == 1, !b.is_ascii_digit(), "{:?}", bytes);
            }
            prop_assert_eq!(marks & !u64::from_ne_bytes([0x80; 8]), 0);
        }

        #[test]
        fn digits_value_is_the_number_the_digits_spell(
            digits in "[0-9]{1,7}",
            after in any::<[u8; 7]>(),
        ) {
            let mut bytes = digits.clone().into_bytes();
            bytes.extend_from_slice(&after);
            let word = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            prop_assert_eq!(digits_value(word, digits.len()), digits.parse::<u64>().unwrap());
        }
    }

    #[test]
    fn short_decimals_at_their_edges() {
        // (text, what the word-wise reading does: Some(value) or left to the general path;
        // the number ends within its first word or not)
        let cases: [(&str, Option<f64>); 20] = [
            ("921.02,\"p90\":1", Some(921.02)),
            ("5.123456,}}}}}}}", Some(5.123456)),
            ("5.12345,}}}}}}}", Some(5.12345)),
            ("-92.5]}}}}}}}", Some(-92.5)),
            ("12.5e3}}}}}}}", None),
            ("12.5E3}}}}}}}", None),
            ("1234.5678e1}}}}}}", None),
            ("-0.5}}}}}}}}", Some(-0.5)),
            ("-0}}}}}}}}", Some(-0.0)),
            ("1234567.1234567}", Some(1234567.1234567)),
            ("12345678.5}}}}}}}", None),
            ("1.12345678}}}}}}", None),
            ("00.5}}}}}}}}", None),
            ("1.}}}}}}}}}}", None),
            ("1.5e3}}}}}}}", None),
            ("15E3}}}}}}}}", None),
            (".5}}}}}}}}}}", None),
            ("-}}}}}}}}}}}", None),
            ("921.02", None),
            ("7}}}}}}}", Some(7.0)),
        ];
        for (text, expected) in cases {
            let read = short_decimal(text.as_bytes(), 0).map(|(v, _)| v.to_bits());
            assert_eq!(read, expected.map(f64::to_bits), "{text}");
        }
    }
}
