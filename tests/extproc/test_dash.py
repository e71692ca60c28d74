"""DASH rewriter: every URI position of ISO/IEC 23009-1, BaseURL chains, templates, XML escaping,
byte preservation and the refusal of dangerous or broken XML."""

from __future__ import annotations

import pytest

from extproc.dash import rewrite_dash
from extproc.errors import ManifestForbiddenXml, ManifestMalformed, MapperContractError
from extproc.uri import ManifestLimits, UriKind, UriRef
from tests.extproc import Recorder

NS = 'xmlns="urn:mpeg:dash:schema:mpd:2011"'


def mpd(body: str, attributes: str = "") -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<MPD {NS}{attributes}>{body}</MPD>\n'


def run(document: str, mapper: Recorder | None = None) -> tuple[str, list[UriRef]]:
    mapper = mapper or Recorder()
    return rewrite_dash(document.encode(), mapper).decode(), mapper.refs


# (id, MPD body, expected body, expected (raw, kind, is_template) offered)
POSITIONS = [
    (
        "BaseURL text",
        "<BaseURL>https://cdn.example/v/</BaseURL>",
        "<BaseURL>https://cdn.example/v/?pdt=TEST</BaseURL>",
        [("https://cdn.example/v/", UriKind.DASH_BASE_URL, False)],
    ),
    (
        "BaseURL with whitespace and attributes",
        '<BaseURL serviceLocation="a" >\n   video.mp4\n  </BaseURL>',
        '<BaseURL serviceLocation="a" >\n   video.mp4?pdt=TEST\n  </BaseURL>',
        [("video.mp4", UriKind.DASH_BASE_URL, False)],
    ),
    (
        "SegmentTemplate attributes",
        '<Period><AdaptationSet><SegmentTemplate timescale="1"'
        ' media="$RepresentationID$/$Number%05d$.m4s"'
        ' initialization="$RepresentationID$/init.mp4" index="$RepresentationID$.sidx"'
        ' bitstreamSwitching="$Bandwidth$-bs.mp4" startNumber="1"/></AdaptationSet></Period>',
        '<Period><AdaptationSet><SegmentTemplate timescale="1"'
        ' media="$RepresentationID$/$Number%05d$.m4s?pdt=TEST"'
        ' initialization="$RepresentationID$/init.mp4?pdt=TEST"'
        ' index="$RepresentationID$.sidx?pdt=TEST"'
        ' bitstreamSwitching="$Bandwidth$-bs.mp4?pdt=TEST" startNumber="1"/>'
        "</AdaptationSet></Period>",
        [
            ("$RepresentationID$/$Number%05d$.m4s", UriKind.DASH_SEGMENT, True),
            ("$RepresentationID$/init.mp4", UriKind.DASH_INIT, True),
            ("$RepresentationID$.sidx", UriKind.DASH_INDEX, True),
            ("$Bandwidth$-bs.mp4", UriKind.DASH_BITSTREAM_SWITCHING, True),
        ],
    ),
    (
        "SegmentTemplate $Time$ with SegmentTimeline and $$",
        '<SegmentTemplate media="t_$Time$_$$.m4s"><SegmentTimeline><S t="0" d="2" r="3"/>'
        "</SegmentTimeline></SegmentTemplate>",
        '<SegmentTemplate media="t_$Time$_$$.m4s?pdt=TEST"><SegmentTimeline><S t="0" d="2" r="3"/>'
        "</SegmentTimeline></SegmentTemplate>",
        [("t_$Time$_$$.m4s", UriKind.DASH_SEGMENT, True)],
    ),
    (
        "SegmentList",
        '<SegmentList duration="10"><Initialization sourceURL="init.mp4" range="0-99"/>'
        '<RepresentationIndex sourceURL="index.sidx"/><BitstreamSwitching sourceURL="bs.mp4"/>'
        '<SegmentURL media="s1.m4s" mediaRange="0-9"/><SegmentURL media="s2.m4s" index="s2.idx"/>'
        '<SegmentURL mediaRange="10-19"/></SegmentList>',
        '<SegmentList duration="10"><Initialization sourceURL="init.mp4?pdt=TEST" range="0-99"/>'
        '<RepresentationIndex sourceURL="index.sidx?pdt=TEST"/>'
        '<BitstreamSwitching sourceURL="bs.mp4?pdt=TEST"/>'
        '<SegmentURL media="s1.m4s?pdt=TEST" mediaRange="0-9"/>'
        '<SegmentURL media="s2.m4s?pdt=TEST" index="s2.idx?pdt=TEST"/>'
        '<SegmentURL mediaRange="10-19"/></SegmentList>',
        [
            ("init.mp4", UriKind.DASH_INIT, False),
            ("index.sidx", UriKind.DASH_INDEX, False),
            ("bs.mp4", UriKind.DASH_BITSTREAM_SWITCHING, False),
            ("s1.m4s", UriKind.DASH_SEGMENT, False),
            ("s2.m4s", UriKind.DASH_SEGMENT, False),
            ("s2.idx", UriKind.DASH_INDEX, False),
        ],
    ),
    (
        "SegmentBase: the BaseURL is the media, Initialization has only a range",
        '<Period><AdaptationSet><Representation id="1"><BaseURL>v.mp4</BaseURL>'
        '<SegmentBase indexRange="100-200"><Initialization range="0-99"/></SegmentBase>'
        "</Representation></AdaptationSet></Period>",
        '<Period><AdaptationSet><Representation id="1"><BaseURL>v.mp4?pdt=TEST</BaseURL>'
        '<SegmentBase indexRange="100-200"><Initialization range="0-99"/></SegmentBase>'
        "</Representation></AdaptationSet></Period>",
        [("v.mp4", UriKind.DASH_BASE_URL, False)],
    ),
    (
        "Location and PatchLocation",
        "<Location>https://example.com/live.mpd</Location>"
        '<PatchLocation ttl="60">/patch/Manifest.mpp?publishTime=2024-04-21T06%3A1</PatchLocation>',
        "<Location>https://example.com/live.mpd?pdt=TEST</Location>"
        '<PatchLocation ttl="60">/patch/Manifest.mpp?publishTime=2024-04-21T06%3A1&amp;pdt=TEST'
        "</PatchLocation>",
        [
            ("https://example.com/live.mpd", UriKind.DASH_LOCATION, False),
            (
                "/patch/Manifest.mpp?publishTime=2024-04-21T06%3A1",
                UriKind.DASH_PATCH_LOCATION,
                False,
            ),
        ],
    ),
    (
        "UTCTiming http schemes hold URL lists; direct and ntp do not",
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-xsdate:2014"'
        ' value="https://time.akamai.com/?iso&amp;ms  http://t2.example/"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-head:2014" value="http://h.example/"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="2018-05-20T19:56:59Z"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:ntp:2014" value="pool.ntp.org"/>',
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-xsdate:2014"'
        ' value="https://time.akamai.com/?iso&amp;ms&amp;pdt=TEST  http://t2.example/?pdt=TEST"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:http-head:2014" value="http://h.example/?pdt=TEST"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:direct:2014" value="2018-05-20T19:56:59Z"/>'
        '<UTCTiming schemeIdUri="urn:mpeg:dash:utc:ntp:2014" value="pool.ntp.org"/>',
        [
            ("https://time.akamai.com/?iso&ms", UriKind.DASH_UTC_TIMING, False),
            ("http://t2.example/", UriKind.DASH_UTC_TIMING, False),
            ("http://h.example/", UriKind.DASH_UTC_TIMING, False),
        ],
    ),
    (
        "ContentSteering",
        '<ContentSteering defaultServiceLocation="a">https://steer.example/dash.dcsm</ContentSteering>',
        '<ContentSteering defaultServiceLocation="a">https://steer.example/dash.dcsm?pdt=TEST</ContentSteering>',
        [("https://steer.example/dash.dcsm", UriKind.STEERING, False)],
    ),
    (
        "license URLs in their vendor namespaces",
        '<Period><AdaptationSet><ContentProtection schemeIdUri="urn:uuid:e2719d58"'
        ' xmlns:dashif="https://dashif.org/CPS">'
        '<dashif:Laurl licenseType="EME-1.0">https://clearkey.example</dashif:Laurl>'
        "<dashif:Authzurl>https://auth.example</dashif:Authzurl></ContentProtection>"
        '<ContentProtection xmlns:ms="urn:microsoft" schemeIdUri="urn:uuid:9a04f079">'
        '<ms:laurl licenseUrl="https://pr.example/rightsmanager.asmx"/></ContentProtection>'
        "</AdaptationSet></Period>",
        '<Period><AdaptationSet><ContentProtection schemeIdUri="urn:uuid:e2719d58"'
        ' xmlns:dashif="https://dashif.org/CPS">'
        '<dashif:Laurl licenseType="EME-1.0">https://clearkey.example?pdt=TEST</dashif:Laurl>'
        "<dashif:Authzurl>https://auth.example?pdt=TEST</dashif:Authzurl></ContentProtection>"
        '<ContentProtection xmlns:ms="urn:microsoft" schemeIdUri="urn:uuid:9a04f079">'
        '<ms:laurl licenseUrl="https://pr.example/rightsmanager.asmx?pdt=TEST"/></ContentProtection>'
        "</AdaptationSet></Period>",
        [
            ("https://clearkey.example", UriKind.LICENSE_URL, False),
            ("https://auth.example", UriKind.LICENSE_URL, False),
            ("https://pr.example/rightsmanager.asmx", UriKind.LICENSE_URL, False),
        ],
    ),
    (
        "segment encryption key template (ISO/IEC 23009-4)",
        '<ContentProtection schemeIdUri="urn:mpeg:dash:sea:2012"'
        ' xmlns:sea="urn:mpeg:dash:schema:sea:2012">'
        '<sea:CryptoPeriod IV="0x37" keyUriTemplate="keys/$Number$"/></ContentProtection>',
        '<ContentProtection schemeIdUri="urn:mpeg:dash:sea:2012"'
        ' xmlns:sea="urn:mpeg:dash:schema:sea:2012">'
        '<sea:CryptoPeriod IV="0x37" keyUriTemplate="keys/$Number$?pdt=TEST"/></ContentProtection>',
        [("keys/$Number$", UriKind.KEY, True)],
    ),
    (
        "alternative MPD event",
        '<Period><EventStream schemeIdUri="urn:mpeg:dash:event:alternativeMPD:replace:2025">'
        '<Event id="1"><ReplacePresentation url="/alt/dash.mpd"/></Event></EventStream></Period>',
        '<Period><EventStream schemeIdUri="urn:mpeg:dash:event:alternativeMPD:replace:2025">'
        '<Event id="1"><ReplacePresentation url="/alt/dash.mpd?pdt=TEST"/></Event>'
        "</EventStream></Period>",
        [("/alt/dash.mpd", UriKind.DASH_ALTERNATE_MPD, False)],
    ),
    (
        "single-quoted attributes and &amp; in URLs",
        "<SegmentTemplate media='s_$Number$.m4s?a=1&amp;b=2' initialization='i.mp4'/>",
        "<SegmentTemplate media='s_$Number$.m4s?a=1&amp;b=2&amp;pdt=TEST'"
        " initialization='i.mp4?pdt=TEST'/>",
        [
            ("s_$Number$.m4s?a=1&b=2", UriKind.DASH_SEGMENT, True),
            ("i.mp4", UriKind.DASH_INIT, True),
        ],
    ),
    (
        "whitespace around '=', line breaks in tags, '>' inside values",
        "<SegmentURL\n  mediaRange='0-9' media\n =\t'a.m4s' index = \"b>c\"/>"
        '<BaseURL serviceLocation="x>y" >d/</BaseURL>',
        "<SegmentURL\n  mediaRange='0-9' media\n =\t'a.m4s?pdt=TEST' index = \"b>c?pdt=TEST\"/>"
        '<BaseURL serviceLocation="x>y" >d/?pdt=TEST</BaseURL>',
        [
            ("a.m4s", UriKind.DASH_SEGMENT, False),
            ("b>c", UriKind.DASH_INDEX, False),
            ("d/", UriKind.DASH_BASE_URL, False),
        ],
    ),
    (
        "character references and attribute whitespace decoded for the mapper",
        '<SegmentURL media=" a&#x2F;b&#38;c.m4s "/><BaseURL>x&lt;y&gt;</BaseURL>',
        '<SegmentURL media=" a/b&amp;c.m4s?pdt=TEST "/><BaseURL>x&lt;y&gt;?pdt=TEST</BaseURL>',
        [("a/b&c.m4s", UriKind.DASH_SEGMENT, False), ("x<y>", UriKind.DASH_BASE_URL, False)],
    ),
    (
        "data: URIs and empty values are never offered",
        "<BaseURL>data:video/mp4;base64,AAAA</BaseURL><BaseURL></BaseURL><BaseURL/>"
        '<SegmentURL media=""/><Initialization sourceURL="DATA:,x"/>',
        "<BaseURL>data:video/mp4;base64,AAAA</BaseURL><BaseURL></BaseURL><BaseURL/>"
        '<SegmentURL media=""/><Initialization sourceURL="DATA:,x"/>',
        [],
    ),
    (
        "comments, CDATA outside URI elements and processing instructions survive",
        "<!-- <BaseURL>commented/</BaseURL> --><?pi <BaseURL>x</BaseURL>?>"
        '<ProgramInformation moreInformationURL="https://info.example/"><Title><![CDATA[<b>&</b>]]></Title>'
        "</ProgramInformation><BaseURL>real/</BaseURL>",
        "<!-- <BaseURL>commented/</BaseURL> --><?pi <BaseURL>x</BaseURL>?>"
        '<ProgramInformation moreInformationURL="https://info.example/"><Title><![CDATA[<b>&</b>]]></Title>'
        "</ProgramInformation><BaseURL>real/?pdt=TEST</BaseURL>",
        [("real/", UriKind.DASH_BASE_URL, False)],
    ),
    (
        "CDATA or comments inside a URI element: the content is replaced as a whole",
        "<BaseURL> <![CDATA[a&b/]]><!-- c --> </BaseURL><Location><!--x-->https://l.example/</Location>",
        "<BaseURL> a&amp;b/?pdt=TEST </BaseURL><Location>https://l.example/?pdt=TEST</Location>",
        [
            ("a&b/", UriKind.DASH_BASE_URL, False),
            ("https://l.example/", UriKind.DASH_LOCATION, False),
        ],
    ),
    (
        "URI element with a child element holds no URI",
        "<BaseURL>a/<x/>b/</BaseURL>",
        "<BaseURL>a/<x/>b/</BaseURL>",
        [],
    ),
    (
        "elements of another namespace are not MPD elements",
        '<x:BaseURL xmlns:x="urn:other">a/</x:BaseURL><Location>l.mpd</Location>',
        '<x:BaseURL xmlns:x="urn:other">a/</x:BaseURL><Location>l.mpd?pdt=TEST</Location>',
        [("l.mpd", UriKind.DASH_LOCATION, False)],
    ),
]


@pytest.mark.parametrize(
    ("body", "expected", "offered"),
    [case[1:] for case in POSITIONS],
    ids=[case[0] for case in POSITIONS],
)
def test_uri_positions(body: str, expected: str, offered: list[tuple[str, UriKind, bool]]) -> None:
    out, refs = run(mpd(body))
    assert out == mpd(expected)
    assert [(ref.raw, ref.kind, ref.is_template) for ref in refs] == offered


NESTED = mpd(
    "<BaseURL>https://a.example/root/</BaseURL><BaseURL>https://b.example/root/</BaseURL>"
    "<Location>https://a.example/live.mpd</Location>"
    '<Period id="1"><BaseURL>p1/</BaseURL>'
    "<AdaptationSet><BaseURL>video/</BaseURL><BaseURL>video-alt/</BaseURL>"
    '<SegmentTemplate media="$RepresentationID$/$Number$.m4s"/>'
    '<Representation id="hd"><BaseURL>hd/</BaseURL>'
    '<SegmentList><SegmentURL media="s1.m4s"/></SegmentList></Representation>'
    '<Representation id="sd"/></AdaptationSet>'
    '<AdaptationSet><SegmentTemplate media="audio/$Number$.m4s"/></AdaptationSet></Period>'
    '<Period id="2"><AdaptationSet xlink:href="remote.xml" xmlns:xlink="http://www.w3.org/1999/xlink"/>'
    '<AdaptationSet><SegmentTemplate media="p2/$Number$.m4s"/></AdaptationSet></Period>'
)


def test_bases_are_the_first_base_url_of_each_enclosing_level() -> None:
    _, refs = run(NESTED)
    assert [(ref.raw, ref.bases) for ref in refs] == [
        ("https://a.example/root/", ()),
        ("https://b.example/root/", ()),  # an alternative: resolved like the first
        ("https://a.example/live.mpd", ()),
        ("p1/", ("https://a.example/root/",)),
        ("video/", ("https://a.example/root/", "p1/")),
        ("video-alt/", ("https://a.example/root/", "p1/")),
        ("$RepresentationID$/$Number$.m4s", ("https://a.example/root/", "p1/", "video/")),
        ("hd/", ("https://a.example/root/", "p1/", "video/")),
        ("s1.m4s", ("https://a.example/root/", "p1/", "video/", "hd/")),
        ("audio/$Number$.m4s", ("https://a.example/root/", "p1/")),  # sibling set: no video/
        ("remote.xml", ()),
        ("p2/$Number$.m4s", ("https://a.example/root/",)),  # the first period's base is gone
    ]
    assert refs[-2].kind is UriKind.DASH_XLINK


def test_bases_resolve_like_a_player_with_urljoin() -> None:
    from functools import reduce
    from urllib.parse import urljoin

    _, refs = run(NESTED)
    leaf = refs[8]
    assert reduce(urljoin, ("https://origin.example/v/manifest.mpd", *leaf.bases, leaf.raw)) == (
        "https://a.example/root/p1/video/hd/s1.m4s"
    )


@pytest.mark.parametrize(
    ("href", "offered"),
    [
        ("https://remote.example/period.xml", ["https://remote.example/period.xml"]),
        ("urn:mpeg:dash:resolve-to-zero:2013", []),
    ],
)
def test_xlink_href_under_any_prefix(href: str, offered: list[str]) -> None:
    document = mpd(
        f'<Period xl:href="{href}" xl:actuate="onLoad"/><Period foo:href="other.xml"/>',
        ' xmlns:xl="http://www.w3.org/1999/xlink" xmlns:foo="urn:foo"',
    )
    out, refs = run(document)
    assert [ref.raw for ref in refs] == offered
    assert all(ref.kind is UriKind.DASH_XLINK and ref.bases == () for ref in refs)
    if offered:
        assert out == document.replace(href, href + "?pdt=TEST")


def test_prefixed_mpd_namespace_and_undeclared_prefixes() -> None:
    document = (
        '<mpd:MPD xmlns:mpd="urn:mpeg:dash:schema:mpd:2011"><mpd:BaseURL>b/</mpd:BaseURL>'
        "<mpd:Period><mspr:pro>AAAA</mspr:pro>"
        '<mpd:SegmentTemplate media="$Number$.m4s"/></mpd:Period></mpd:MPD>'
    )
    out, refs = run(document)
    assert [(ref.raw, ref.bases) for ref in refs] == [("b/", ()), ("$Number$.m4s", ("b/",))]
    assert out == document.replace("b/<", "b/?pdt=TEST<").replace(".m4s", ".m4s?pdt=TEST")


@pytest.mark.parametrize(
    ("returned", "written"),
    [
        ("seg_$Number$.m4s?t=a$b", "seg_$Number$.m4s?t=a$$b"),
        (
            "https://cdn.example/$x/seg_$Number$.m4s?t=$",
            "https://cdn.example/$$x/seg_$Number$.m4s?t=$$",
        ),
        ("seg_$Number$.m4s", None),
    ],
)
def test_dollars_added_to_a_template_are_doubled(returned: str, written: str | None) -> None:
    document = mpd('<SegmentTemplate media="seg_$Number$.m4s"/>')
    out = rewrite_dash(document.encode(), lambda ref: returned)
    expected = document if written is None else document.replace("seg_$Number$.m4s", written)
    assert out.decode() == expected


def test_dollars_inserted_before_a_template_fragment_are_doubled() -> None:
    document = mpd('<SegmentTemplate media="s_$Number$.m4s#t=1"/>')
    out = rewrite_dash(document.encode(), lambda ref: "s_$Number$.m4s?k=$1#t=1")
    assert out.decode() == document.replace("#t=1", "").replace('.m4s"', '.m4s?k=$$1#t=1"')


def test_a_mapper_that_alters_template_identifiers_breaks_the_contract() -> None:
    document = mpd('<SegmentTemplate media="s_$Number$.m4s"/>')
    with pytest.raises(MapperContractError):
        rewrite_dash(document.encode(), lambda ref: "s_$Time$.m4s?x=1")


def test_mapper_output_is_escaped_for_its_quote_and_context() -> None:
    document = mpd("<SegmentURL media='a.m4s'/><SegmentURL media=\"b.m4s\"/><BaseURL>c/</BaseURL>")
    out = rewrite_dash(document.encode(), lambda ref: ref.raw + "?q='\"<&>")
    assert out.decode() == mpd(
        "<SegmentURL media='a.m4s?q=&apos;\"&lt;&amp;>'/>"
        '<SegmentURL media="b.m4s?q=\'&quot;&lt;&amp;>"/>'
        "<BaseURL>c/?q='\"&lt;&amp;&gt;</BaseURL>"
    )


def test_mapper_returning_none_or_the_same_uri_returns_the_input_object() -> None:
    data = NESTED.encode()
    assert rewrite_dash(data, lambda ref: None) is data
    assert rewrite_dash(data, lambda ref: ref.raw) is data


def test_latin1_document_keeps_its_encoding() -> None:
    document = (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
        f"<MPD {NS}><BaseURL>vidéo/</BaseURL><Location>l.mpd</Location></MPD>"
    )
    mapper = Recorder()
    out = rewrite_dash(document.encode("latin-1"), mapper)
    assert mapper.raws == ["vidéo/", "l.mpd"]
    assert out == document.replace("/<", "/?pdt=TEST<").replace(".mpd<", ".mpd?pdt=TEST<").encode(
        "latin-1"
    )
    out = rewrite_dash(document.encode("latin-1"), lambda ref: ref.raw + "?t=\u20ac")
    assert b"vid\xe9o/?t=&#8364;</BaseURL>" in out


def test_utf8_bom_and_crlf_survive() -> None:
    document = "\ufeff" + mpd("\r\n<BaseURL>\r\n  b/\r\n</BaseURL>\r\n").replace("\n", "\r\n")
    out, _ = run(document)
    assert out == document.replace("b/", "b/?pdt=TEST")


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><BaseURL>&lol9;</BaseURL></MPD>
"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE MPD [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"><BaseURL>&x;</BaseURL></MPD>
"""


@pytest.mark.parametrize(
    "document",
    [
        BILLION_LAUGHS,
        XXE,
        '<!DOCTYPE MPD SYSTEM "http://evil.example/mpd.dtd"><MPD/>',
        "<!DOCTYPE MPD><MPD/>",
    ],
    ids=["billion laughs", "external entity", "external DTD", "bare DOCTYPE"],
)
def test_doctype_is_refused_before_anything_is_expanded(document: str) -> None:
    mapper = Recorder()
    with pytest.raises(ManifestForbiddenXml):
        rewrite_dash(document.encode(), mapper)
    assert mapper.refs == []


@pytest.mark.parametrize(
    "document",
    [
        "",
        "   ",
        "not xml at all",
        f"<MPD {NS}><Period></MPD>",
        f"<MPD {NS}><Period></AdaptationSet></Period></MPD>",
        f"<MPD {NS}></MPD><MPD/>",
        f"<MPD {NS}/>trailing text",
        f"<MPD {NS}><BaseURL>&undefined;</BaseURL></MPD>",
        f'<MPD {NS}><SegmentURL media="a&b"/></MPD>',
        f'<MPD {NS}><SegmentURL media="a<b"/></MPD>',
        f'<MPD {NS}><SegmentURL media="a" media="b"/></MPD>',
        f"<MPD {NS}><SegmentURL media=unquoted/></MPD>",
        f"<MPD {NS}><!-- unterminated </MPD>",
        f"<MPD {NS}><BaseURL>&#x110000;</BaseURL></MPD>",
        f"<MPD {NS}><BaseURL>&#0;</BaseURL></MPD>",
        f"<MPD {NS}><BaseURL>a/</BaseURL>",
    ],
)
def test_malformed_xml_is_refused(document: str) -> None:
    with pytest.raises(ManifestMalformed):
        rewrite_dash(document.encode(), Recorder())


@pytest.mark.parametrize(
    "data",
    [
        '<?xml version="1.0" encoding="UTF-16"?><MPD/>'.encode("utf-16"),
        b'<?xml version="1.0" encoding="EBCDIC-CP-US"?><MPD/>',
        b"<MPD><BaseURL>\xff</BaseURL></MPD>",
    ],
    ids=["UTF-16", "unknown encoding", "invalid UTF-8"],
)
def test_unsupported_or_invalid_encodings_are_refused(data: bytes) -> None:
    with pytest.raises(ManifestMalformed):
        rewrite_dash(data, Recorder())


def test_nesting_depth_is_limited() -> None:
    limits = ManifestLimits(max_depth=8)
    ok = mpd("<a>" * 6 + "</a>" * 6)
    rewrite_dash(ok.encode(), Recorder(), limits)
    too_deep = mpd("<a>" * 8 + "</a>" * 8)
    with pytest.raises(ManifestMalformed, match="deeper"):
        rewrite_dash(too_deep.encode(), Recorder(), limits)
