"""HLS rewriter: every URI position of RFC 8216/8216bis, byte preservation, refusals."""

from __future__ import annotations

import pytest

from extproc.errors import ManifestMalformed, ManifestTooLarge, MapperContractError
from extproc.hls import rewrite_hls
from extproc.manifest import ManifestKind, rewrite
from extproc.uri import ManifestLimits, UriKind, UriRef
from tests.extproc import Recorder

HEAD = "#EXTM3U\n"

# (id, playlist body after #EXTM3U, expected output body, expected (raw, kind) offered to mapper)
POSITIONS = [
    (
        "segment after EXTINF",
        "#EXTINF:6.0,\nseg1.ts\n",
        "#EXTINF:6.0,\nseg1.ts?pdt=TEST\n",
        [("seg1.ts", UriKind.SEGMENT)],
    ),
    (
        "segment with query and BYTERANGE",
        "#EXTINF:6,\n#EXT-X-BYTERANGE:100@0\nv.mp4?a=1\n",
        "#EXTINF:6,\n#EXT-X-BYTERANGE:100@0\nv.mp4?a=1&pdt=TEST\n",
        [("v.mp4?a=1", UriKind.SEGMENT)],
    ),
    (
        "segment with fragment and dot segments",
        "#EXTINF:6,\n../media/s.ts#t=3\n",
        "#EXTINF:6,\n../media/s.ts?pdt=TEST#t=3\n",
        [("../media/s.ts#t=3", UriKind.SEGMENT)],
    ),
    (
        "variant after EXT-X-STREAM-INF",
        '#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2"\nlow/index.m3u8\n',
        '#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2"\n'
        "low/index.m3u8?pdt=TEST\n",
        [("low/index.m3u8", UriKind.PLAYLIST)],
    ),
    (
        "variant after STREAM-INF, comment and blank line between",
        "#EXT-X-STREAM-INF:BANDWIDTH=1\n# note\n\nhi.m3u8\n#EXTINF:1,\ns.ts\n",
        "#EXT-X-STREAM-INF:BANDWIDTH=1\n# note\n\nhi.m3u8?pdt=TEST\n#EXTINF:1,\ns.ts?pdt=TEST\n",
        [("hi.m3u8", UriKind.PLAYLIST), ("s.ts", UriKind.SEGMENT)],
    ),
    (
        "EXT-X-KEY",
        '#EXT-X-KEY:METHOD=AES-128,URI="https://k.example/key?id=1",IV=0x1\n',
        '#EXT-X-KEY:METHOD=AES-128,URI="https://k.example/key?id=1&pdt=TEST",IV=0x1\n',
        [("https://k.example/key?id=1", UriKind.KEY)],
    ),
    ("EXT-X-KEY METHOD=NONE", "#EXT-X-KEY:METHOD=NONE\n", "#EXT-X-KEY:METHOD=NONE\n", []),
    (
        "EXT-X-SESSION-KEY",
        '#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="key.bin",KEYFORMAT="identity"\n',
        '#EXT-X-SESSION-KEY:METHOD=SAMPLE-AES,URI="key.bin?pdt=TEST",KEYFORMAT="identity"\n',
        [("key.bin", UriKind.KEY)],
    ),
    (
        "EXT-X-MAP with BYTERANGE",
        '#EXT-X-MAP:URI="main.mp4",BYTERANGE="720@0"\n',
        '#EXT-X-MAP:URI="main.mp4?pdt=TEST",BYTERANGE="720@0"\n',
        [("main.mp4", UriKind.MAP)],
    ),
    (
        "EXT-X-MEDIA rendition",
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="English",URI="audio/en.m3u8"\n',
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="English",URI="audio/en.m3u8?pdt=TEST"\n',
        [("audio/en.m3u8", UriKind.PLAYLIST)],
    ),
    (
        "EXT-X-MEDIA closed captions without URI",
        '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="CC1",INSTREAM-ID="CC1"\n',
        '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="CC1",INSTREAM-ID="CC1"\n',
        [],
    ),
    (
        "EXT-X-I-FRAME-STREAM-INF",
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI="iframe/index.m3u8"\n',
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=86000,URI="iframe/index.m3u8?pdt=TEST"\n',
        [("iframe/index.m3u8", UriKind.PLAYLIST)],
    ),
    (
        "EXT-X-IMAGE-STREAM-INF",
        '#EXT-X-IMAGE-STREAM-INF:BANDWIDTH=1,RESOLUTION=320x180,URI="thumbs/i.m3u8"\n',
        '#EXT-X-IMAGE-STREAM-INF:BANDWIDTH=1,RESOLUTION=320x180,URI="thumbs/i.m3u8?pdt=TEST"\n',
        [("thumbs/i.m3u8", UriKind.PLAYLIST)],
    ),
    (
        "EXT-X-PART",
        '#EXT-X-PART:DURATION=0.33334,URI="part271.0.mp4",INDEPENDENT=YES\n',
        '#EXT-X-PART:DURATION=0.33334,URI="part271.0.mp4?pdt=TEST",INDEPENDENT=YES\n',
        [("part271.0.mp4", UriKind.PART)],
    ),
    (
        "EXT-X-PART with BYTERANGE",
        '#EXT-X-PART:DURATION=1,URI="seg.mp4",BYTERANGE="100@0"\n',
        '#EXT-X-PART:DURATION=1,URI="seg.mp4?pdt=TEST",BYTERANGE="100@0"\n',
        [("seg.mp4", UriKind.PART)],
    ),
    (
        "EXT-X-PRELOAD-HINT",
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part273.3.mp4"\n',
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part273.3.mp4?pdt=TEST"\n',
        [("part273.3.mp4", UriKind.PRELOAD_HINT)],
    ),
    (
        "EXT-X-RENDITION-REPORT with _HLS_msn",
        '#EXT-X-RENDITION-REPORT:URI="../1M/w.php?_HLS_msn=273",LAST-MSN=273,LAST-PART=2\n',
        '#EXT-X-RENDITION-REPORT:URI="../1M/w.php?_HLS_msn=273&pdt=TEST",LAST-MSN=273,LAST-PART=2\n',
        [("../1M/w.php?_HLS_msn=273", UriKind.RENDITION_REPORT)],
    ),
    (
        "EXT-X-SESSION-DATA",
        '#EXT-X-SESSION-DATA:DATA-ID="com.example.title",URI="title.json"\n',
        '#EXT-X-SESSION-DATA:DATA-ID="com.example.title",URI="title.json?pdt=TEST"\n',
        [("title.json", UriKind.SESSION_DATA)],
    ),
    (
        "EXT-X-SESSION-DATA with VALUE",
        '#EXT-X-SESSION-DATA:DATA-ID="com.example.t",VALUE="URI=x"\n',
        '#EXT-X-SESSION-DATA:DATA-ID="com.example.t",VALUE="URI=x"\n',
        [],
    ),
    (
        "EXT-X-CONTENT-STEERING",
        '#EXT-X-CONTENT-STEERING:SERVER-URI="/steering?video=1",PATHWAY-ID="CDN-A"\n',
        '#EXT-X-CONTENT-STEERING:SERVER-URI="/steering?video=1&pdt=TEST",PATHWAY-ID="CDN-A"\n',
        [("/steering?video=1", UriKind.STEERING)],
    ),
    (
        "interstitial X-ASSET-URI",
        '#EXT-X-DATERANGE:ID="ad1",CLASS="com.apple.hls.interstitial",'
        'START-DATE="2020-01-02T21:55:44Z",X-ASSET-URI="ad1.m3u8",X-RESUME-OFFSET=0\n',
        '#EXT-X-DATERANGE:ID="ad1",CLASS="com.apple.hls.interstitial",'
        'START-DATE="2020-01-02T21:55:44Z",X-ASSET-URI="ad1.m3u8?pdt=TEST",X-RESUME-OFFSET=0\n',
        [("ad1.m3u8", UriKind.INTERSTITIAL_ASSET)],
    ),
    (
        "interstitial X-ASSET-LIST",
        '#EXT-X-DATERANGE:ID="b",CLASS="com.apple.hls.interstitial",X-ASSET-LIST="ads.json"\n',
        '#EXT-X-DATERANGE:ID="b",CLASS="com.apple.hls.interstitial",X-ASSET-LIST="ads.json?pdt=TEST"\n',
        [("ads.json", UriKind.INTERSTITIAL_LIST)],
    ),
    (
        "DATERANGE SCTE-35 and client attributes untouched",
        '#EXT-X-DATERANGE:ID="s",START-DATE="2020-01-01T00:00:00Z",SCTE35-OUT=0xFC30,'
        'X-URI="http://example.com/x.m3u8"\n',
        '#EXT-X-DATERANGE:ID="s",START-DATE="2020-01-01T00:00:00Z",SCTE35-OUT=0xFC30,'
        'X-URI="http://example.com/x.m3u8"\n',
        [],
    ),
    (
        "unknown tag, SCTE tags and comments keep URI-like text",
        '#EXT-X-FOO:URI="a.ts"\n#EXT-X-CUE-OUT:DURATION=30\n# URI="b.ts"\n#EXT-OATCLS-SCTE35:/D=\n',
        '#EXT-X-FOO:URI="a.ts"\n#EXT-X-CUE-OUT:DURATION=30\n# URI="b.ts"\n#EXT-OATCLS-SCTE35:/D=\n',
        [],
    ),
    (
        "quoted comma and equals before URI",
        '#EXT-X-MEDIA:NAME="a,URI=b",CHARACTERISTICS="x=y",URI="r.m3u8"\n',
        '#EXT-X-MEDIA:NAME="a,URI=b",CHARACTERISTICS="x=y",URI="r.m3u8?pdt=TEST"\n',
        [("r.m3u8", UriKind.PLAYLIST)],
    ),
    (
        "unquoted URI attribute, as players accept",
        "#EXT-X-KEY:METHOD=AES-128,URI=k.bin ,IV=0x1\n",
        "#EXT-X-KEY:METHOD=AES-128,URI=k.bin?pdt=TEST ,IV=0x1\n",
        [("k.bin", UriKind.KEY)],
    ),
    (
        "stray quote in the value before URI (seen in the wild)",
        '#EXT-X-KEY:METHOD=AES-128,IV=0011",URI="https://m.example/s"\n',
        '#EXT-X-KEY:METHOD=AES-128,IV=0011",URI="https://m.example/s?pdt=TEST"\n',
        [("https://m.example/s", UriKind.KEY)],
    ),
    (
        "empty attribute list items and spaces after commas",
        '#EXT-X-STREAM-INF:,BANDWIDTH=1\nv.m3u8\n#EXT-X-MAP:BYTERANGE="1@0", URI="i.mp4"\n',
        "#EXT-X-STREAM-INF:,BANDWIDTH=1\nv.m3u8?pdt=TEST\n"
        '#EXT-X-MAP:BYTERANGE="1@0", URI="i.mp4?pdt=TEST"\n',
        [("v.m3u8", UriKind.PLAYLIST), ("i.mp4", UriKind.MAP)],
    ),
    (
        "data:, skd:// and {$var} are never offered",
        '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://key?KeyId=1"\n'
        '#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI="data:text/plain;base64,AAAA"\n'
        '#EXT-X-MAP:URI="{$base}/init.mp4"\n#EXTINF:1,\n{$Define1}.ts\n#EXTINF:1,\nDATA:x\n'
        "#EXTINF:1,\nseg.ts?t={$token}\n",
        '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://key?KeyId=1"\n'
        '#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,URI="data:text/plain;base64,AAAA"\n'
        '#EXT-X-MAP:URI="{$base}/init.mp4"\n#EXTINF:1,\n{$Define1}.ts\n#EXTINF:1,\nDATA:x\n'
        "#EXTINF:1,\nseg.ts?t={$token}\n",
        [],
    ),
    (
        "EXT-X-SKIP delta update and LL-HLS tags survive",
        "#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=24.0,CAN-BLOCK-RELOAD=YES\n"
        "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXTINF:4,\nf267.mp4\n",
        "#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=24.0,CAN-BLOCK-RELOAD=YES\n"
        "#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n#EXTINF:4,\nf267.mp4?pdt=TEST\n",
        [("f267.mp4", UriKind.SEGMENT)],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected", "offered"),
    [case[1:] for case in POSITIONS],
    ids=[case[0] for case in POSITIONS],
)
def test_uri_positions(body: str, expected: str, offered: list[tuple[str, UriKind]]) -> None:
    mapper = Recorder()
    assert rewrite_hls(HEAD + body, mapper) == HEAD + expected
    assert [(ref.raw, ref.kind) for ref in mapper.refs] == offered
    assert all(ref.bases == () and not ref.is_template for ref in mapper.refs)


@pytest.mark.parametrize(
    ("playlist", "expected"),
    [
        pytest.param(
            '#EXTM3U\r\n#EXTINF:1,\r\na.ts\r\n#EXT-X-MAP:URI="i.mp4"\r\n',
            '#EXTM3U\r\n#EXTINF:1,\r\na.ts?pdt=TEST\r\n#EXT-X-MAP:URI="i.mp4?pdt=TEST"\r\n',
            id="CRLF",
        ),
        pytest.param(
            "#EXTM3U\n#EXTINF:1,\r\na.ts\n#EXTINF:1,\nb.ts\r\n",
            "#EXTM3U\n#EXTINF:1,\r\na.ts?pdt=TEST\n#EXTINF:1,\nb.ts?pdt=TEST\r\n",
            id="mixed line endings",
        ),
        pytest.param(
            "#EXTM3U\n#EXTINF:1,\na.ts", "#EXTM3U\n#EXTINF:1,\na.ts?pdt=TEST", id="no final newline"
        ),
        pytest.param(
            "\ufeff#EXTM3U\n#EXTINF:1,\na.ts\n",
            "\ufeff#EXTM3U\n#EXTINF:1,\na.ts?pdt=TEST\n",
            id="BOM",
        ),
        pytest.param(
            "#EXTM3U\n#EXTINF:1,\n  a.ts \t\n#EXTINF:1,\n\tb.ts\r\n    \n",
            "#EXTM3U\n#EXTINF:1,\n  a.ts?pdt=TEST \t\n#EXTINF:1,\n\tb.ts?pdt=TEST\r\n    \n",
            id="whitespace around URI lines",
        ),
        pytest.param(
            '#EXTM3U\n  #EXT-X-MAP:URI="i.mp4"\n  # comment\n',
            '#EXTM3U\n  #EXT-X-MAP:URI="i.mp4?pdt=TEST"\n  # comment\n',
            id="indented tag and comment",
        ),
        pytest.param(
            "#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/t/00001.ts\n#EXT-X-ENDLIST\n",
            "#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/t/00001.ts?pdt=TEST\n#EXT-X-ENDLIST\n",
            id="no #EXTM3U but tags",
        ),
    ],
)
def test_bytes_around_uris_survive(playlist: str, expected: str) -> None:
    assert rewrite_hls(playlist, Recorder()) == expected


def test_mapper_is_called_per_occurrence_in_document_order() -> None:
    playlist = (
        '#EXTM3U\n#EXT-X-MAP:URI="v.mp4",BYTERANGE="10@0"\n'
        "#EXTINF:1,\n#EXT-X-BYTERANGE:20@10\nv.mp4\n"
        '#EXT-X-PART:DURATION=1,URI="p.mp4"\n#EXTINF:1,\n#EXT-X-BYTERANGE:20\nv.mp4\n'
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="q.mp4"\n'
    )
    mapper = Recorder()
    rewrite_hls(playlist, mapper)
    assert mapper.raws == ["v.mp4", "v.mp4", "p.mp4", "v.mp4", "q.mp4"]
    assert [ref.kind for ref in mapper.refs] == [
        UriKind.MAP,
        UriKind.SEGMENT,
        UriKind.PART,
        UriKind.SEGMENT,
        UriKind.PRELOAD_HINT,
    ]


def test_mapper_returning_none_or_the_same_uri_leaves_the_object_untouched() -> None:
    playlist = '#EXTM3U\r\n#EXTINF:1,\r\n a.ts \r\n#EXT-X-KEY:METHOD=AES-128,URI="k"'
    assert rewrite_hls(playlist, lambda ref: None) is playlist
    assert rewrite_hls(playlist, lambda ref: ref.raw) is playlist
    body = playlist.encode()
    assert rewrite(ManifestKind.HLS, body, lambda ref: None) is body


def test_mapper_may_skip_some_uris() -> None:
    playlist = "#EXTM3U\n#EXTINF:1,\nhttps://ads.example/a.ts\n#EXTINF:1,\nb.ts\n"

    def ours_only(ref: UriRef) -> str | None:
        return None if ref.raw.startswith("https://") else ref.raw + "?t=1"

    assert rewrite_hls(playlist, ours_only) == (
        "#EXTM3U\n#EXTINF:1,\nhttps://ads.example/a.ts\n#EXTINF:1,\nb.ts?t=1\n"
    )


def test_unquoted_value_gets_quotes_when_the_mapper_adds_a_comma() -> None:
    playlist = "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=k.bin,IV=0x1\n"
    out = rewrite_hls(playlist, lambda ref: ref.raw + "?a=1,2")
    assert out == '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="k.bin?a=1,2",IV=0x1\n'


@pytest.mark.parametrize(
    ("playlist", "bad"),
    [
        ("#EXTM3U\n#EXTINF:1,\na.ts\n", "a.ts\n#EXT-X-ENDLIST"),
        ("#EXTM3U\n#EXTINF:1,\na.ts\n", "#a.ts"),
        ("#EXTM3U\n#EXTINF:1,\na.ts\n", ""),
        ("#EXTM3U\n#EXTINF:1,\na.ts\n", "a.ts\r"),
        ('#EXTM3U\n#EXT-X-MAP:URI="i.mp4"\n', 'i.mp4",BYTERANGE="1'),
        ('#EXTM3U\n#EXT-X-MAP:URI="i.mp4"\n', "i.mp4\nx"),
    ],
)
def test_a_mapper_cannot_inject_lines_or_attributes(playlist: str, bad: str) -> None:
    with pytest.raises(MapperContractError):
        rewrite_hls(playlist, lambda ref: bad)


def test_unencodable_mapper_output_is_a_contract_error() -> None:
    with pytest.raises(MapperContractError):
        rewrite(ManifestKind.HLS, b"#EXTM3U\n#EXTINF:1,\na.ts\n", lambda ref: "a\ud800.ts")


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "<html><body>Not found</body></html>", "segment.ts\nother.ts\n", "{}"],
)
def test_text_without_any_hls_tag_is_refused(text: str) -> None:
    mapper = Recorder()
    with pytest.raises(ManifestMalformed):
        rewrite_hls(text, mapper)
    assert mapper.refs == []


def test_limits() -> None:
    limits = ManifestLimits(max_bytes=100, max_line_chars=20)
    rewrite_hls("#EXTM3U\n#EXTINF:1,\n" + "a" * 20 + "\n", Recorder(), limits)
    with pytest.raises(ManifestMalformed, match="line"):
        rewrite_hls("#EXTM3U\n#EXTINF:1,\n" + "a" * 21 + "\n", Recorder(), limits)
    with pytest.raises(ManifestTooLarge):
        rewrite_hls("#EXTM3U\n" + "#EXTINF:1,\na.ts\n" * 10, Recorder(), limits)
    with pytest.raises(ManifestTooLarge):
        rewrite(ManifestKind.HLS, b"#EXTM3U\n" + b"#\n" * 50, Recorder(), limits)


def test_default_limits_refuse_a_64k_line_and_8mib() -> None:
    with pytest.raises(ManifestMalformed):
        rewrite_hls("#EXTM3U\n#EXTINF:1,\n" + "a" * (64 * 1024 + 1) + "\n", Recorder())
    with pytest.raises(ManifestTooLarge):
        rewrite(ManifestKind.HLS, b"#EXTM3U\n" + b"#" * (8 * 1024 * 1024), Recorder())


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(ManifestMalformed, match="UTF-8"):
        rewrite(ManifestKind.HLS, b"#EXTM3U\n#EXTINF:1,\n\xff.ts\n", Recorder())


def test_utf8_uris_round_trip_as_bytes() -> None:
    body = "#EXTM3U\n#EXTINF:1,\nvidéo/セグメント.ts\n".encode()
    mapper = Recorder()
    out = rewrite(ManifestKind.HLS, body, mapper)
    assert mapper.raws == ["vidéo/セグメント.ts"]
    assert out == "#EXTM3U\n#EXTINF:1,\nvidéo/セグメント.ts?pdt=TEST\n".encode()


def test_a_lone_cr_is_refused_because_players_split_lines_there() -> None:
    with pytest.raises(ManifestMalformed, match="CR"):
        rewrite_hls("#EXTM3U\r\n#EXTINF:1,\ra.ts\r\n", Recorder())


def test_a_stray_quote_in_an_unquoted_uri_attribute_is_refused() -> None:
    with pytest.raises(ManifestMalformed, match="quote"):
        rewrite_hls('#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=k"ey\n', Recorder())
