import Proto
import Testing

@Suite struct ProxyHeaderTests {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func version1() {
        let line = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 5001\r\n"
        #expect(ProxyHeader.parse(bytes(line + "\u{16}\u{03}")) == .header(length: line.utf8.count, client: ("192.0.2.7", 56324)))
        let six = "PROXY TCP6 2001:db8::7 2001:db8::1 4000 5001\r\n"
        #expect(ProxyHeader.parse(bytes(six)) == .header(length: six.utf8.count, client: ("2001:db8::7", 4000)))
        #expect(ProxyHeader.parse(bytes("PROXY UNKNOWN\r\n")) == .header(length: 15, client: nil))
        #expect(ProxyHeader.parse(bytes("PROXY TCP4 192.0.2.7 198.51")) == .incomplete)
        #expect(ProxyHeader.parse(bytes("PRO")) == .incomplete)
    }

    @Test func version1Refusals() {
        for bad in ["GET / HTTP/1.1\r\n\r\n", "PROXY TCP4 192.0.2.7 198.51.100.1 99999 5001\r\n",
                    "PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n", "PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n",
                    "PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n", "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
                    "\u{16}\u{03}\u{01}\u{02}\u{00}\u{01}"] {
            #expect(ProxyHeader.parse(bytes(bad)) == .invalid, "\(bad)")
        }
        #expect(ProxyHeader.parse(bytes("PROXY " + String(repeating: "9", count: 120))) == .invalid, "too long without CRLF")
    }

    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    @Test func version2() {
        let v4 = Self.signature + [0x21, 0x11, 0x00, 0x0C] + [192, 0, 2, 7] + [198, 51, 100, 1] + [0xDC, 0x04] + [0x13, 0x89]
        #expect(ProxyHeader.parse(v4 + [0x16]) == .header(length: 28, client: ("192.0.2.7", 56324)))
        var src6: [UInt8] = [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [7]
        src6 += [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1]
        let v6 = Self.signature + [0x21, 0x21, 0x00, 0x24] + src6 + [0x0F, 0xA0, 0x13, 0x89]
        #expect(ProxyHeader.parse(v6) == .header(length: 52, client: ("2001:db8:0:0:0:0:0:7", 4000)))
        let local = Self.signature + [0x20, 0x00, 0x00, 0x00]
        #expect(ProxyHeader.parse(local) == .header(length: 16, client: nil))
        #expect(ProxyHeader.parse(Array(v4.prefix(20))) == .incomplete)
        #expect(ProxyHeader.parse(Array(Self.signature.prefix(8))) == .incomplete)
    }

    @Test func version2Refusals() {
        #expect(ProxyHeader.parse(Self.signature + [0x11, 0x11, 0x00, 0x0C] + Array(repeating: 0, count: 12)) == .invalid, "version 1 in a v2 header")
        #expect(ProxyHeader.parse(Self.signature + [0x22, 0x11, 0x00, 0x0C] + Array(repeating: 0, count: 12)) == .invalid, "unknown command")
        #expect(ProxyHeader.parse(Self.signature + [0x21, 0x11, 0x02, 0x01]) == .invalid, "block over 512 bytes")
        #expect(ProxyHeader.parse(Self.signature + [0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]) == .invalid, "block too short for IPv4")
    }
}
