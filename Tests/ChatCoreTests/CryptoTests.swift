import ChatCore
import Foundation
import Testing

@Suite struct PasswordHashTests {
    @Test func roundTripAndVerify() throws {
        let h = try PasswordHash.make(password: "correct horse", logN: 10)
        let parsed = try PasswordHash(parsing: h.string)
        #expect(parsed == h)
        #expect(h.string.hasPrefix("$scrypt$ln=10,r=8,p=1$"))
        #expect(parsed.verify(password: "correct horse"))
        #expect(!parsed.verify(password: "correct horsf"))
    }

    @Test func knownVectorFromRFC7914() throws {
        // RFC 7914 §12: P="password", S="NaCl", N=1024, r=8, p=16, 64 bytes.
        let h = PasswordHash(logN: 10, r: 8, p: 16, salt: Array("NaCl".utf8),
                             key: hex("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"))
        #expect(h.verify(password: "password"))
    }

    @Test(arguments: ["password123", "", "$scrypt$", "$scrypt$ln=15,r=8$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "$argon2id$v=19$m=1,t=1,p=1$abc$def",
                      "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5"])
    func plainTextAndOddStringsAreRejected(text: String) {
        #expect(throws: PasswordHash.Invalid.self) { try PasswordHash(parsing: text) }
    }

    @Test func usersFileRejectsPlainPasswords() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sc-users-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("users.json").path
        try Data(#"{"admin": "password123"}"#.utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: PasswordHash.Invalid.self) { try UsersFile(path: path) }
        var file = UsersFile()
        file.users["amy"] = try PasswordHash.make(password: "pw", logN: 10)
        try file.write(path: path)
        #expect(try UsersFile(path: path).users["amy"]?.verify(password: "pw") == true)
    }

    func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            out.append(UInt8(s[i..<j], radix: 16)!)
            i = j
        }
        return out
    }
}

@Suite struct SessionTests {
    @Test func tokensAreLongAndDistinct() throws {
        let a = try Crypto.newToken(), b = try Crypto.newToken()
        #expect(a != b)
        #expect(SessionStore.isWellFormed(a) && a.count == 43)
        #expect(!SessionStore.isWellFormed("short"))
        #expect(!SessionStore.isWellFormed(String(repeating: "a", count: 42) + "!"))
    }

    @Test func cookieParsing() {
        #expect(SessionStore.sessionID(fromCookieHeaders: ["theme=dark; __Host-sc_session=abc; x=1"]) == "abc")
        #expect(SessionStore.sessionID(fromCookieHeaders: ["a=1", "__Host-sc_session=zz"]) == "zz")
        #expect(SessionStore.sessionID(fromCookieHeaders: ["x__Host-sc_session=1"]) == nil)
        #expect(SessionStore.sessionID(fromCookieHeaders: ["__Host-sc_session=a; __Host-sc_session=b"]) == nil, "two are refused")
        #expect(SessionStore.sessionID(fromCookieHeaders: ["__Host-sc_session=a", "__Host-sc_session=a"]) == nil)
        #expect(SessionStore.sessionID(fromCookieHeaders: ["sc_session=abc"]) == nil, "the old name is not read")
    }

    @Test func sha256() {
        #expect(Crypto.sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Crypto.constantTimeEqual([1, 2], [1, 2]) && !Crypto.constantTimeEqual([1, 2], [1, 3]) && !Crypto.constantTimeEqual([1], [1, 2]))
    }
}

@Suite struct LinkAuthTests {
    let g = [UInt8](repeating: 1, count: 16), w = [UInt8](repeating: 2, count: 16)

    @Test func proofsDependOnSecretRoleIdsAndNonces() {
        let a = LinkAuth(secret: "s3cret")
        let base = a.workerProof(gateway: "gw-1", worker: "worker-1", gatewayNonce: g, workerNonce: w)
        #expect(base.count == 32)
        #expect(a.verify(base, expected: a.workerProof(gateway: "gw-1", worker: "worker-1", gatewayNonce: g, workerNonce: w)))
        // A relayed handshake cannot be passed off as another worker's or gateway's, or replayed with a new nonce.
        #expect(base != a.workerProof(gateway: "gw-1", worker: "worker-2", gatewayNonce: g, workerNonce: w))
        #expect(base != a.workerProof(gateway: "gw-2", worker: "worker-1", gatewayNonce: g, workerNonce: w))
        #expect(base != a.workerProof(gateway: "gw-1", worker: "worker-1", gatewayNonce: w, workerNonce: g))
        #expect(base != a.gatewayProof(gateway: "gw-1", worker: "worker-1", gatewayNonce: g, workerNonce: w))
        #expect(base != LinkAuth(secret: "other").workerProof(gateway: "gw-1", worker: "worker-1", gatewayNonce: g, workerNonce: w))
        // Ids cannot run together: ("ab","c") and ("a","bc") differ.
        #expect(a.workerProof(gateway: "ab", worker: "c", gatewayNonce: g, workerNonce: w)
                != a.workerProof(gateway: "a", worker: "bc", gatewayNonce: g, workerNonce: w))
    }
}
