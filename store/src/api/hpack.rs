//! Just enough HPACK (RFC 7541) for the HTTP/2 server (`http2`): a decoder for request header
//! blocks, with the dynamic table and Huffman decoding, and response encoding as literals without
//! indexing (static-table names and `:status` indexed, no Huffman), so a response never depends
//! on, or changes, the client's dynamic table.
//!
//! Invariants: every length and integer is bounded before use, malformed input is an error (never a
//! panic), and the dynamic table never exceeds the size the server advertised.

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::Bytes;

/// Why a header block could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ended inside a representation.
    #[error("header block truncated")]
    Truncated,
    /// An integer does not fit.
    #[error("integer overflow in header block")]
    Overflow,
    /// A table index that does not exist.
    #[error("header table index {0} out of range")]
    BadIndex(usize),
    /// Bad Huffman data (EOS decoded, or invalid padding).
    #[error("invalid Huffman-coded string")]
    BadHuffman,
    /// A dynamic table size update above the advertised limit.
    #[error("dynamic table size {0} above the limit")]
    TableTooLarge(usize),
}

/// A header: name and value bytes. Reference-counted, so resolving an index into the tables (most
/// fields of a connection's later requests) copies nothing.
pub type Header = (Bytes, Bytes);

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Bit length of the Huffman code of each symbol 0..=256 (RFC 7541 Appendix B; 256 is EOS). The
/// code is canonical, so the codes themselves follow from the lengths.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_CODE_LENGTH: usize = 30;

/// Canonical decoding tables: per length, the first code and where its symbols start.
struct Canonical {
    first_code: [u32; MAX_CODE_LENGTH + 1],
    count: [u32; MAX_CODE_LENGTH + 1],
    offset: [usize; MAX_CODE_LENGTH + 1],
    /// Symbols sorted by (length, symbol).
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..=256u16).collect();
        symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[s as usize], s));
        let mut table = Canonical {
            first_code: [0; MAX_CODE_LENGTH + 1],
            count: [0; MAX_CODE_LENGTH + 1],
            offset: [0; MAX_CODE_LENGTH + 1],
            symbols,
        };
        for &len in &HUFFMAN_LENGTHS {
            table.count[len as usize] += 1;
        }
        let mut code = 0u32;
        let mut offset = 0usize;
        for len in 1..=MAX_CODE_LENGTH {
            code <<= 1;
            table.first_code[len] = code;
            table.offset[len] = offset;
            code += table.count[len];
            offset += table.count[len] as usize;
        }
        table
    })
}

/// Decodes a Huffman-coded string.
pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, HpackError> {
    let table = canonical();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len > MAX_CODE_LENGTH {
                return Err(HpackError::BadHuffman);
            }
            let index = code.wrapping_sub(table.first_code[len]);
            if index < table.count[len] {
                let symbol = table.symbols[table.offset[len] + index as usize];
                if symbol == EOS {
                    return Err(HpackError::BadHuffman);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// Reads an integer with an `prefix`-bit prefix from `input[*at..]`.
fn read_int(input: &[u8], at: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix) as usize - 1;
    let first = *input.get(*at).ok_or(HpackError::Truncated)? as usize & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    for shift in (0..).step_by(7) {
        let byte = *input.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    Ok(value)
}

fn read_string(input: &[u8], at: &mut usize) -> Result<Bytes, HpackError> {
    let huffman = input.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = read_int(input, at, 7)?;
    let end = at.checked_add(len).filter(|&e| e <= input.len()).ok_or(HpackError::Truncated)?;
    let raw = &input[*at..end];
    *at = end;
    if huffman { huffman_decode(raw).map(Bytes::from) } else { Ok(Bytes::copy_from_slice(raw)) }
}

/// Decodes header blocks of one connection direction, keeping its dynamic table.
#[derive(Debug)]
pub struct Decoder {
    dynamic: VecDeque<Header>,
    size: usize,
    max_size: usize,
    /// The largest size the peer may choose (what the server advertised).
    limit: usize,
}

impl Decoder {
    /// A decoder whose dynamic table may grow to `limit` bytes (HTTP/2's default is 4096).
    pub fn new(limit: usize) -> Self {
        Self { dynamic: VecDeque::new(), size: 0, max_size: limit, limit }
    }

    fn get(&self, index: usize) -> Result<Header, HpackError> {
        match index {
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((Bytes::from_static(name.as_bytes()), Bytes::from_static(value.as_bytes())))
            }
            _ => self.dynamic.get(index.wrapping_sub(62)).cloned().ok_or(HpackError::BadIndex(index)),
        }
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, header: Header) {
        let entry = header.0.len() + header.1.len() + 32;
        self.size += entry;
        self.dynamic.push_front(header);
        self.evict();
    }

    /// Decodes one complete header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Header>, HpackError> {
        let mut headers = Vec::new();
        let mut at = 0;
        while at < block.len() {
            let byte = block[at];
            if byte & 0x80 != 0 {
                let index = read_int(block, &mut at, 7)?;
                headers.push(self.get(index)?);
            } else if byte & 0xc0 == 0x40 {
                let index = read_int(block, &mut at, 6)?;
                let name = if index == 0 { read_string(block, &mut at)? } else { self.get(index)?.0 };
                let value = read_string(block, &mut at)?;
                self.insert((name.clone(), value.clone()));
                headers.push((name, value));
            } else if byte & 0xe0 == 0x20 {
                let size = read_int(block, &mut at, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableTooLarge(size));
                }
                self.max_size = size;
                self.evict();
            } else {
                let index = read_int(block, &mut at, 4)?;
                let name = if index == 0 { read_string(block, &mut at)? } else { self.get(index)?.0 };
                let value = read_string(block, &mut at)?;
                headers.push((name, value));
            }
        }
        Ok(headers)
    }
}

fn write_int(out: &mut Vec<u8>, first: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(first | value as u8);
        return;
    }
    out.push(first | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Encodes headers as literals without indexing (no dynamic table, no Huffman): how tests write
/// a client's request header blocks.
#[cfg(test)]
pub fn encode(headers: &[Header]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        write_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        write_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// Appends `:status` for a response: the static table's entry when it has one (200, the only
/// status gRPC uses, is one byte), else a literal with the indexed name.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    const STATUS_INDEX: usize = 8;
    let indexed = [200, 204, 206, 304, 400, 404, 500].iter().position(|&s| s == status);
    match indexed {
        Some(offset) => write_int(out, 0x80, 7, STATUS_INDEX + offset),
        None => {
            write_int(out, 0x00, 4, STATUS_INDEX);
            let value = status.to_string();
            write_int(out, 0, 7, value.len());
            out.extend_from_slice(value.as_bytes());
        }
    }
}

/// Appends one header field as a literal without indexing (so the receiver's dynamic table is
/// untouched), naming the static table's entry when the name has one.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match STATIC_TABLE.iter().position(|(static_name, _)| static_name.as_bytes() == name) {
        Some(index) => write_int(out, 0x00, 4, index + 1),
        None => {
            out.push(0x00);
            write_int(out, 0, 7, name.len());
            out.extend_from_slice(name);
        }
    }
    write_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn pairs(headers: &[Header]) -> Vec<(String, String)> {
        headers.iter().map(|(n, v)| (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into())).collect()
    }

    #[test]
    fn decodes_the_rfc_7541_huffman_request_examples_with_the_dynamic_table() {
        // RFC 7541 C.4: three requests on one connection, Huffman-coded, sharing the table.
        let mut decoder = Decoder::new(4096);
        let first = decoder.decode(&unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            pairs(&first),
            [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
                .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        let second = decoder.decode(&unhex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(pairs(&second)[3], (":authority".to_string(), "www.example.com".to_string()));
        assert_eq!(pairs(&second)[4], ("cache-control".to_string(), "no-cache".to_string()));
        let third = decoder.decode(&unhex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")).unwrap();
        assert_eq!(pairs(&third)[4], ("custom-key".to_string(), "custom-value".to_string()));
        assert_eq!(decoder.size, 164, "table size after C.4.3");
    }

    #[test]
    fn encoded_blocks_decode_to_the_same_headers() {
        let headers: Vec<Header> = vec![
            (Bytes::from_static(b":authority"), Bytes::from_static(b"127.0.0.1:2379")),
            (Bytes::from_static(b"x-long"), Bytes::from(vec![b'a'; 300])),
        ];
        assert_eq!(Decoder::new(4096).decode(&encode(&headers)).unwrap(), headers);
    }

    #[test]
    fn response_fields_decode_as_written_without_touching_the_dynamic_table() {
        let mut block = Vec::new();
        encode_status(&mut block, 200);
        assert_eq!(block, [0x88], "status 200 is one indexed byte");
        encode_status(&mut block, 503);
        encode_field(&mut block, b"content-type", b"application/grpc");
        encode_field(&mut block, b"grpc-status", b"14");
        let mut decoder = Decoder::new(4096);
        let headers = pairs(&decoder.decode(&block).expect("decodes"));
        let expected =
            [(":status", "200"), (":status", "503"), ("content-type", "application/grpc"), ("grpc-status", "14")];
        assert_eq!(headers, expected.map(|(n, v)| (n.to_string(), v.to_string())));
        assert!(decoder.decode(&[0xbe]).is_err(), "nothing entered the dynamic table");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(decoder.decode(&[0xbe]), Err(HpackError::BadIndex(62)));
        assert_eq!(decoder.decode(&[0x41, 0x85, 0xff]), Err(HpackError::Truncated));
        assert_eq!(decoder.decode(&[0x3f, 0xe2, 0x1f]), Err(HpackError::TableTooLarge(4097)));
        assert_eq!(huffman_decode(&[0x00]), Err(HpackError::BadHuffman), "zero padding is invalid");
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]), Err(HpackError::BadHuffman), "EOS is invalid");
    }
}
