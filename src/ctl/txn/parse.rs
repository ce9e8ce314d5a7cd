//! Parsing `keel ctl txn`'s input lines: compares, and request lines into protobuf requests (see
//! `mod.rs` for the input's sections and the output).
//!
//! A compare is `TARGET("KEY") OP "VALUE"` with TARGET one of `version`/`ver`, `create`/`c`,
//! `mod`/`m`, `value`/`val` or `lease` (the value in hex), OP one of `=`, `!=`, `<`, `>`, and KEY and
//! VALUE quoted as Go quotes strings (`"..."` with Go's escapes, or `` `raw` ``), since etcdctl
//! reads them with Go's `%q`. A request is an etcdctl command line — `get`, `put` or `del` with
//! their flags — split into words as etcdctl's `Argify` does: `"..."` (Go escapes), `'...'` (raw) or
//! a bare run of non-space characters.
//!
//! Invariants: parsing is pure (no I/O) and takes one already trimmed line; an error is one line
//! saying what is wrong, and the caller adds the line's number and text. Keys and values are bytes
//! (`\xNN` may make them non-UTF-8).
//!
//! Deliberate differences from etcdctl, all on input etcdctl rejects or misreads: an unknown
//! operator is an error (etcdctl panics); text after a compare's value, an unterminated quote or
//! text glued to a closing quote is an error (etcdctl ignores or splits it); a `put` without a value
//! is an error (etcdctl would read the value from the already consumed input); flags do not leak
//! from one request line to the next (etcdctl's global flag variables do); and a negative `--rev`
//! or `--limit` is an error. Spaces around a compare's parts are optional. `get`'s
//! `--consistency`, `--max-bytes` and `--print-value-only` are not accepted (etcdctl ignores the
//! last inside a transaction).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::{Parser, ValueEnum};
use keel_proto::etcdserverpb as pb;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use pb::request_op::Request;

use super::super::kv::{key_range_bytes, parse_lease_id};

/// Parses `TARGET("KEY") OP "VALUE"` as etcdctl's `ParseCompare` does; the error says what is wrong
/// (the caller adds the line).
pub(super) fn parse_compare(line: &[u8]) -> Result<pb::Compare, String> {
    let Some(open) = line.iter().position(|&b| b == b'(') else {
        return Err("expected TARGET(\"KEY\") OP \"VALUE\", e.g. value(\"k\") = \"v\"".into());
    };
    let name = lossy(line[..open].trim_ascii());
    let target = match name.as_str() {
        "ver" | "version" => CompareTarget::Version,
        "c" | "create" => CompareTarget::Create,
        "m" | "mod" => CompareTarget::Mod,
        "val" | "value" => CompareTarget::Value,
        "lease" => CompareTarget::Lease,
        _ => return Err(format!("unknown target {name} (expected version, create, mod, value or lease)")),
    };
    let mut rest = Cursor { rest: &line[open + 1..] };
    rest.skip_spaces();
    let key = rest.go_quoted().map_err(|why| format!("the key: {why}"))?;
    rest.skip_spaces();
    if !rest.eat(b')') {
        return Err("expected ) after the key".into());
    }
    rest.skip_spaces();
    let op = rest.take_while(|b| matches!(b, b'=' | b'!' | b'<' | b'>'));
    let result = match op {
        b"=" => CompareResult::Equal,
        b"!=" => CompareResult::NotEqual,
        b"<" => CompareResult::Less,
        b">" => CompareResult::Greater,
        b"" => return Err("expected an operator (=, !=, < or >) after the key".into()),
        other => return Err(format!("unknown operator {} (expected =, !=, < or >)", lossy(other))),
    };
    rest.skip_spaces();
    let value = rest.go_quoted().map_err(|why| format!("the value: {why}"))?;
    rest.skip_spaces();
    if !rest.rest.is_empty() {
        return Err(format!("unexpected text after the value: {}", lossy(rest.rest)));
    }
    // Revisions and versions are decimal, lease ids hex, as in etcdctl.
    let number = || {
        std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| format!("{name} needs a decimal number, got \"{}\"", lossy(&value)))
    };
    let target_union = match target {
        CompareTarget::Version => TargetUnion::Version(number()?),
        CompareTarget::Create => TargetUnion::CreateRevision(number()?),
        CompareTarget::Mod => TargetUnion::ModRevision(number()?),
        CompareTarget::Lease => TargetUnion::Lease(parse_lease_id(&lossy(&value))?),
        CompareTarget::Value => TargetUnion::Value(value),
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(target_union),
    })
}

/// Parses one request line (`get ...`, `put ...`, `del ...`) with etcdctl's flags.
pub(super) fn parse_request(line: &[u8]) -> Result<pb::RequestOp, String> {
    let words = words(line)?;
    let Some(name) = words.first().cloned() else {
        return Err("expected get, put or del".into());
    };
    // Clap takes the first word as the command's name; the others are its arguments. OsString
    // keeps keys and values as bytes.
    let args = words.into_iter().map(OsString::from_vec);
    let request = match name.as_slice() {
        b"get" => Request::RequestRange(GetOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        b"put" => Request::RequestPut(PutOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        b"del" => Request::RequestDeleteRange(DelOp::try_parse_from(args).map_err(clap_reason)?.request()?),
        other => return Err(format!("unknown request {} (expected get, put or del)", lossy(other))),
    };
    Ok(pb::RequestOp { request: Some(request) })
}

/// A clap error as one line: its first paragraph (clap goes on with usage and tips), white space
/// collapsed.
fn clap_reason(error: clap::Error) -> String {
    let text = error.to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A `get` request line.
#[derive(Debug, Parser)]
#[command(name = "get", disable_help_flag = true)]
struct GetOp {
    /// The key (with --prefix, the prefix; with --from-key, the first key).
    key: OsString,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<OsString>,
    /// Get every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Get every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Read at this revision (0: the transaction's).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    rev: i64,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    limit: i64,
    /// Return keys without values.
    #[arg(long)]
    keys_only: bool,
    /// Return only the count.
    #[arg(long)]
    count_only: bool,
    /// Order of the results (case does not matter).
    #[arg(long, value_enum, ignore_case = true)]
    order: Option<Order>,
    /// What to sort by (case does not matter).
    #[arg(long, value_enum, ignore_case = true)]
    sort_by: Option<SortBy>,
}

/// `--order`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Order {
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// `--sort-by`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum SortBy {
    /// Creation revision.
    Create,
    /// Key.
    Key,
    /// Modification revision.
    Modify,
    /// Value.
    Value,
    /// Version.
    Version,
}

impl GetOp {
    /// The range request etcdctl's `getGetOp` builds.
    fn request(self) -> Result<pb::RangeRequest, String> {
        if self.keys_only && self.count_only {
            return Err("`--keys-only` and `--count-only` cannot be set at the same time, choose one".into());
        }
        let (key, range_end) = key_range(self.key, self.range_end, self.prefix, self.from_key)?;
        let target = match self.sort_by {
            None | Some(SortBy::Key) => SortTarget::Key,
            Some(SortBy::Create) => SortTarget::Create,
            Some(SortBy::Modify) => SortTarget::Mod,
            Some(SortBy::Value) => SortTarget::Value,
            Some(SortBy::Version) => SortTarget::Version,
        };
        let order = match self.order {
            None => SortOrder::None,
            // Keys already come in ascending order; clientv3's WithSort drops this order so the
            // server need not collect the whole range before applying the limit.
            Some(Order::Ascend) if target == SortTarget::Key => SortOrder::None,
            Some(Order::Ascend) => SortOrder::Ascend,
            Some(Order::Descend) => SortOrder::Descend,
        };
        Ok(pb::RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.rev,
            sort_order: order as i32,
            sort_target: target as i32,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        })
    }
}

/// A `put` request line.
#[derive(Debug, Parser)]
#[command(name = "put", disable_help_flag = true)]
struct PutOp {
    /// The key.
    key: OsString,
    /// The value (required unless --ignore-value).
    value: Option<OsString>,
    /// Attach the key to this lease (hex id).
    #[arg(long, value_parser = parse_lease_id, default_value = "0")]
    lease: i64,
    /// Return the previous key-value.
    #[arg(long)]
    prev_kv: bool,
    /// Keep the current value (only the lease changes).
    #[arg(long)]
    ignore_value: bool,
    /// Keep the current lease (only the value changes).
    #[arg(long)]
    ignore_lease: bool,
}

impl PutOp {
    /// The put request etcdctl's `getPutOp` builds.
    fn request(self) -> Result<pb::PutRequest, String> {
        let key = self.key.into_vec();
        if key.is_empty() {
            return Err("the key must not be empty".into());
        }
        let value = match (self.value, self.ignore_value) {
            (Some(value), false) => value.into_vec(),
            (None, true) => Vec::new(),
            (None, false) => return Err("put needs a key and a value".into()),
            (Some(_), true) => return Err("put needs only a key when --ignore-value is set".into()),
        };
        Ok(pb::PutRequest {
            key,
            value,
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

/// A `del` request line.
#[derive(Debug, Parser)]
#[command(name = "del", disable_help_flag = true)]
struct DelOp {
    /// The key (with --prefix, the prefix; with --from-key, the first key).
    key: OsString,
    /// Exclusive end of the range [KEY, RANGE_END).
    range_end: Option<OsString>,
    /// Delete every key starting with KEY.
    #[arg(long)]
    prefix: bool,
    /// Delete every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
    /// Return the deleted key-values.
    #[arg(long)]
    prev_kv: bool,
}

impl DelOp {
    /// The delete request etcdctl's `getDelOp` builds.
    fn request(self) -> Result<pb::DeleteRangeRequest, String> {
        let (key, range_end) = key_range(self.key, self.range_end, self.prefix, self.from_key)?;
        Ok(pb::DeleteRangeRequest { key, range_end, prev_kv: self.prev_kv })
    }
}

/// `(key, range_end)` for KEY, RANGE_END, `--prefix` and `--from-key`: `kv::key_range_bytes`.
fn key_range(
    key: OsString,
    range_end: Option<OsString>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    key_range_bytes(key.into_vec(), range_end.map(OsStringExt::into_vec), prefix, from_key)
}

/// Splits a request line into words as etcdctl's `Argify` does: a word starting with `"` is a Go
/// string literal, one starting with `'` runs to the next `'` (no escapes), any other word runs to
/// the next white space (quotes inside it are literal).
fn words(line: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut cursor = Cursor { rest: line };
    let mut words = Vec::new();
    loop {
        cursor.skip_spaces();
        let word = match cursor.rest.first() {
            None => return Ok(words),
            Some(b'"') => cursor.go_quoted()?,
            Some(b'\'') => {
                let Some(close) = cursor.rest[1..].iter().position(|&b| b == b'\'') else {
                    return Err("missing closing ' quote".into());
                };
                let word = cursor.rest[1..=close].to_vec();
                cursor.rest = &cursor.rest[close + 2..];
                word
            }
            Some(_) => cursor.take_while(|b| !b.is_ascii_whitespace()).to_vec(),
        };
        // etcdctl would silently split `"a"b` into two words; that is almost surely a typo.
        if cursor.rest.first().is_some_and(|b| !b.is_ascii_whitespace()) {
            return Err(format!("unexpected text right after a closing quote: {}", lossy(cursor.rest)));
        }
        words.push(word);
    }
}

/// A position in one line of input.
struct Cursor<'a> {
    /// What is left to read.
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        self.take_while(|b| b.is_ascii_whitespace());
    }

    /// Consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.rest.first() == Some(&byte);
        if next {
            self.rest = &self.rest[1..];
        }
        next
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let end = self.rest.iter().position(|&b| !keep(b)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    /// Reads a Go string literal, as `fmt`'s `%q` scans it: `"..."` with Go's escapes (`\a \b \f
    /// \n \r \t \v \\ \"`, `\xNN`, octal `\NNN`, `\uNNNN`, `\UNNNNNNNN`) or `` `raw` `` (carriage
    /// returns dropped, as Go drops them).
    fn go_quoted(&mut self) -> Result<Vec<u8>, String> {
        match self.rest.first() {
            Some(b'`') => {
                let Some(close) = self.rest[1..].iter().position(|&b| b == b'`') else {
                    return Err("missing closing ` quote".into());
                };
                let raw = self.rest[1..=close].iter().copied().filter(|&b| b != b'\r').collect();
                self.rest = &self.rest[close + 2..];
                Ok(raw)
            }
            Some(b'"') => {
                self.rest = &self.rest[1..];
                let mut out = Vec::new();
                loop {
                    let Some((&byte, rest)) = self.rest.split_first() else {
                        return Err("missing closing \" quote".into());
                    };
                    self.rest = rest;
                    match byte {
                        b'"' => return Ok(out),
                        b'\\' => self.escape(&mut out)?,
                        _ => out.push(byte),
                    }
                }
            }
            _ => Err(format!("expected a quoted string (\"...\"), got {}", lossy(self.rest))),
        }
    }

    /// Decodes one escape (after its backslash) into `out`.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let Some((&kind, rest)) = self.rest.split_first() else {
            return Err("missing closing \" quote".into());
        };
        self.rest = rest;
        let simple = match kind {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            return Ok(());
        }
        let (digits, radix) = match kind {
            b'x' => (2, 16),
            b'u' => (4, 16),
            b'U' => (8, 16),
            b'0'..=b'7' => (3, 8),
            _ => return Err(format!("unknown escape \\{}", lossy(&[kind]))),
        };
        // An octal escape's first digit is the kind byte itself.
        let (text, rest) = if radix == 8 {
            let (more, rest) = self.rest.split_at(self.rest.len().min(2));
            ([&[kind][..], more].concat(), rest)
        } else {
            let (text, rest) = self.rest.split_at(self.rest.len().min(digits));
            (text.to_vec(), rest)
        };
        // The escape as written, for messages.
        let shown =
            if radix == 8 { format!("\\{}", lossy(&text)) } else { format!("\\{}{}", char::from(kind), lossy(&text)) };
        let value = std::str::from_utf8(&text)
            .ok()
            // Digits only: from_str_radix would also take a sign.
            .filter(|t| t.len() == digits && t.chars().all(|c| c.is_digit(radix)))
            .and_then(|t| u32::from_str_radix(t, radix).ok())
            .ok_or_else(|| format!("bad escape {shown}"))?;
        self.rest = rest;
        match kind {
            // \x and octal escapes are single bytes (octal up to \377).
            b'x' | b'0'..=b'7' => out.push(u8::try_from(value).map_err(|_| format!("bad escape {shown}"))?),
            _ => {
                let c = char::from_u32(value).ok_or_else(|| format!("escape {shown} is not a character"))?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        Ok(())
    }
}

/// Bytes for messages.
pub(super) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(line: &str) -> pb::Compare {
        parse_compare(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn compare_error(line: &str) -> String {
        match parse_compare(line.as_bytes()) {
            Ok(c) => panic!("{line} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    fn request(line: &str) -> Request {
        parse_request(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}")).request.expect("a request")
    }

    fn request_error(line: &str) -> String {
        match parse_request(line.as_bytes()) {
            Ok(r) => panic!("{line} parsed as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn compares_cover_every_target_and_operator_like_etcdctl() {
        let c = compare(r#"value("key") = "v""#);
        assert_eq!((c.target, c.result), (CompareTarget::Value as i32, CompareResult::Equal as i32));
        assert_eq!((c.key, c.target_union), (b"key".to_vec(), Some(TargetUnion::Value(b"v".to_vec()))));
        let c = compare(r#"mod("key") > "5""#);
        assert_eq!((c.target, c.result), (CompareTarget::Mod as i32, CompareResult::Greater as i32));
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(5)));
        let c = compare(r#"create("key") < "3""#);
        assert_eq!((c.target, c.result), (CompareTarget::Create as i32, CompareResult::Less as i32));
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(3)));
        let c = compare(r#"version("key") != "0""#);
        assert_eq!((c.target, c.result), (CompareTarget::Version as i32, CompareResult::NotEqual as i32));
        assert_eq!(c.target_union, Some(TargetUnion::Version(0)));
        let c = compare(r#"lease("key") = "694d77aa9e38260f""#);
        assert_eq!(c.target, CompareTarget::Lease as i32);
        assert_eq!(c.target_union, Some(TargetUnion::Lease(0x694d_77aa_9e38_260f)), "lease ids are hex");
        assert!(c.range_end.is_empty());
    }

    #[test]
    fn short_target_names_mean_the_same_as_long_ones() {
        for (short, long) in [("c", "create"), ("m", "mod"), ("val", "value"), ("ver", "version")] {
            assert_eq!(compare(&format!(r#"{short}("k") = "1""#)), compare(&format!(r#"{long}("k") = "1""#)));
        }
    }

    #[test]
    fn spacing_around_compare_tokens_is_flexible() {
        let tight = compare(r#"value("k")="v""#);
        assert_eq!(tight, compare(r#"value ( "k" )   =   "v""#));
        assert_eq!(tight, compare(r#"value("k") = "v""#));
    }

    #[test]
    fn quoted_strings_decode_go_escapes() {
        let c = compare(r#"value("a\"b\\c") = "x\ny\tz\x41\101\u00e9\U0001F600""#);
        assert_eq!(c.key, b"a\"b\\c");
        assert_eq!(c.target_union, Some(TargetUnion::Value("x\ny\tzAAé😀".as_bytes().to_vec())));
        let c = compare(r#"value("\xff\x00") = "\a\b\f\r\v""#);
        assert_eq!(c.key, vec![0xff, 0x00], "\\xNN is a byte, not a character");
        assert_eq!(c.target_union, Some(TargetUnion::Value(vec![7, 8, 12, 13, 11])));
        let c = compare(r"value(`raw\n`) = `with spaces`");
        assert_eq!(c.key, br"raw\n", "backquoted strings are raw");
        assert_eq!(c.target_union, Some(TargetUnion::Value(b"with spaces".to_vec())));
    }

    #[test]
    fn bad_compares_say_what_is_wrong() {
        for (line, expected) in [
            (r#"valu("a") = "1""#, "unknown target valu"),
            (r#"value "a" = "1""#, "expected TARGET(\"KEY\") OP \"VALUE\""),
            (r#"value(a) = "1""#, "the key: expected a quoted string"),
            (r#"value('a') = "1""#, "the key: expected a quoted string"),
            (r#"value("a) = "1""#, "expected ) after the key"),
            (r#"value("a" = "1""#, "expected ) after the key"),
            (r#"value("a") "1""#, "expected an operator"),
            (r#"value("a") == "1""#, "unknown operator =="),
            (r#"value("a") =< "1""#, "unknown operator =<"),
            (r#"value("a") = 1"#, "the value: expected a quoted string"),
            (r#"value("a") ="#, "the value: expected a quoted string"),
            (r#"value("a") = "1"#, "the value: missing closing \" quote"),
            (r#"value("a") = "1" extra"#, "unexpected text after the value: extra"),
            (r#"version("a") = "x""#, "version needs a decimal number, got \"x\""),
            (r#"mod("a") = "0x10""#, "mod needs a decimal number"),
            (r#"c("a") = "1.5""#, "c needs a decimal number"),
            (r#"lease("a") = "xyz""#, "bad lease ID \"xyz\""),
            (r#"value("\q") = "1""#, "unknown escape \\q"),
            (r#"value("\x4") = "1""#, "bad escape \\x4\""),
            (r#"value("\400") = "1""#, "bad escape \\400"),
            (r#"value("\uD800") = "1""#, "escape \\uD800 is not a character"),
        ] {
            let error = compare_error(line);
            assert!(error.contains(expected), "{line}: {error:?} should contain {expected:?}");
        }
    }

    #[test]
    fn request_words_split_like_etcdctl_argify() {
        assert_eq!(words(b"put  k\t v").unwrap(), [b"put".to_vec(), b"k".to_vec(), b"v".to_vec()]);
        assert_eq!(
            words(br#"put "two words" 'it''s'"#).unwrap_err(),
            "unexpected text right after a closing quote: 's'"
        );
        assert_eq!(
            words(br#"put "a \"b\"\x41" 'raw \n' a"b"#).unwrap(),
            [b"put".to_vec(), b"a \"b\"A".to_vec(), br"raw \n".to_vec(), b"a\"b".to_vec()],
            "Go escapes in double quotes, none in single quotes, quotes inside a bare word are literal"
        );
        assert_eq!(words(br#"put "" x"#).unwrap(), [b"put".to_vec(), vec![], b"x".to_vec()]);
        assert!(words(br#"put "open"#).unwrap_err().contains("missing closing \" quote"));
        assert!(words(b"put 'open").unwrap_err().contains("missing closing ' quote"));
    }

    #[test]
    fn put_lines_become_put_requests_with_etcdctl_flags() {
        let Request::RequestPut(put) = request(r#"put k "a value" --lease=694d77aa9e38260f --prev-kv"#) else {
            panic!("not a put")
        };
        assert_eq!(put.key, b"k");
        assert_eq!(put.value, b"a value");
        assert_eq!(put.lease, 0x694d_77aa_9e38_260f);
        assert!(put.prev_kv && !put.ignore_value && !put.ignore_lease);
        let Request::RequestPut(put) = request("put --lease 1f k v") else { panic!("not a put") };
        assert_eq!((put.key.as_slice(), put.value.as_slice(), put.lease), (&b"k"[..], &b"v"[..], 0x1f));
        let Request::RequestPut(put) = request("put k --ignore-value --ignore-lease") else { panic!("not a put") };
        assert!(put.value.is_empty() && put.ignore_value && put.ignore_lease);
        let Request::RequestPut(put) = request(r#"put "\xff" v"#) else { panic!("not a put") };
        assert_eq!(put.key, [0xff], "keys are bytes");
    }

    #[test]
    fn get_lines_become_range_requests_with_etcdctl_flags() {
        let Request::RequestRange(get) = request("get k") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"k"[..], &b""[..]));
        let Request::RequestRange(get) = request("get a c --rev=7 --limit 2 --keys-only") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"a"[..], &b"c"[..]));
        assert_eq!((get.revision, get.limit, get.keys_only, get.count_only), (7, 2, true, false));
        let Request::RequestRange(get) = request("get --prefix foo --count-only") else { panic!("not a get") };
        assert_eq!((get.key.as_slice(), get.range_end.as_slice()), (&b"foo"[..], &b"fop"[..]));
        assert!(get.count_only);
        let Request::RequestRange(get) = request("get --prefix ''") else { panic!("not a get") };
        assert_eq!((get.key, get.range_end), (vec![0], vec![0]), "an empty prefix is every key");
        let Request::RequestRange(get) = request("get --from-key b") else { panic!("not a get") };
        assert_eq!((get.key, get.range_end), (b"b".to_vec(), vec![0]));
        let Request::RequestRange(get) = request("get k --sort-by=MODIFY --order=descend") else { panic!("not a get") };
        assert_eq!((get.sort_target, get.sort_order), (SortTarget::Mod as i32, SortOrder::Descend as i32));
        let Request::RequestRange(get) = request("get k --sort-by key --order ASCEND") else { panic!("not a get") };
        assert_eq!(get.sort_order, SortOrder::None as i32, "ascending by key is the natural order, as in clientv3");
    }

    #[test]
    fn del_lines_become_delete_requests_with_etcdctl_flags() {
        let Request::RequestDeleteRange(del) = request("del k") else { panic!("not a del") };
        assert_eq!((del.key.as_slice(), del.range_end.as_slice(), del.prev_kv), (&b"k"[..], &b""[..], false));
        let Request::RequestDeleteRange(del) = request("del --prefix --prev-kv a/") else { panic!("not a del") };
        assert_eq!((del.key.as_slice(), del.range_end.as_slice(), del.prev_kv), (&b"a/"[..], &b"a0"[..], true));
        let Request::RequestDeleteRange(del) = request("del a z") else { panic!("not a del") };
        assert_eq!(del.range_end, b"z");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (line, expected) in [
            ("frob k", "unknown request frob (expected get, put or del)"),
            ("delete k", "unknown request delete"),
            ("put k", "put needs a key and a value"),
            ("put k v --ignore-value", "only a key when --ignore-value"),
            ("put '' v", "the key must not be empty"),
            ("get ''", "the key must not be empty"),
            ("put k v --lease=xyz", "bad lease ID \"xyz\""),
            ("put k v --frob", "unexpected argument '--frob'"),
            ("put k v extra", "unexpected argument 'extra'"),
            ("get", "required arguments were not provided: <KEY>"),
            ("get k --rev=-1", "--rev"),
            ("get k --rev=x", "invalid value 'x'"),
            ("get k --order=sideways", "invalid value 'sideways'"),
            ("get k --keys-only --count-only", "cannot be set at the same time"),
            ("get --prefix a b", "only accept one argument when `--prefix`"),
            ("del --prefix --from-key a", "cannot be set at the same time"),
            ("del k --help", "unexpected argument '--help'"),
            ("get \"open", "missing closing \" quote"),
        ] {
            let error = request_error(line);
            assert!(error.contains(expected), "{line}: {error:?} should contain {expected:?}");
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }
}
