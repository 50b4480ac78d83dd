import Foundation
import Fuzzing
import NIOCore
import Proto
import Testing

/// The checked-in fuzz corpus (Tests/Fuzz/corpus) replayed on every test run, so that what
/// the fuzzer once found stays fixed even where libFuzzer is not run.
@Suite struct FuzzCorpusTests {
    static let corpus: [(name: String, bytes: [UInt8])] = {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fuzz/corpus").standardized
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).sorted()
        return names.compactMap { name in
            FileManager.default.contents(atPath: dir.appendingPathComponent(name).path).map { (name, Array($0)) }
        }
    }()

    @Test func everyInputHoldsItsProperties() {
        #expect(Self.corpus.count >= 40)
        for input in Self.corpus {
            #expect(ProtoFuzzing.check(input.bytes) == nil, "\(input.name)")
        }
    }

    @Test func seedsReachTheAcceptingPathsOfEveryTarget() throws {
        func body(_ target: ProtoFuzzing.Target) -> [[UInt8]] {
            Self.corpus.filter { $0.bytes.first == target.rawValue }.map { Array($0.bytes.dropFirst()) }
        }
        #expect(body(.clientFrame).contains { if case .success = ClientFrame.decode($0) { true } else { false } })
        #expect(body(.clientFrame).contains { if case .failure = ClientFrame.decode($0) { true } else { false } })
        #expect(body(.messageID).contains { MessageID(String(decoding: $0, as: UTF8.self)) != nil })
        #expect(body(.relayPayload).contains { RoomRelay(payload: String(decoding: $0, as: UTF8.self), room: "lobby") != nil })
        let decodedFrames = body(.coordinatorFrame).filter { (try? CoordinatorCodec.decode(ByteBuffer(bytes: $0))) != nil }
        #expect(decodedFrames.count >= 7)
    }

    @Test func refusalsAreNotViolations() {
        // A frame over the length limit is refused by the decoder (FrameTooLarge), which is correct.
        let tooLarge: [UInt8] = [ProtoFuzzing.Target.lengthPrefixed.rawValue, 0, 0, 0, 65] + Array(repeating: 0x7A, count: 65)
        #expect(ProtoFuzzing.check(tooLarge) == nil)
        #expect(ProtoFuzzing.check([]) == nil)
    }
}
