"""A relay grant covers the flung item only (issue 12 row 1): its metadata, children and images, its
parts and streams (learnt from the answers the relay forwards), its transcode sessions and its queue."""

from __future__ import annotations

import json

from companion.relay.scope import MAX_IDS, GrantScope

SHOW_SEASON = b"""<?xml version="1.0" encoding="UTF-8"?>
<MediaContainer size="1">
  <Video ratingKey="501" key="/library/metadata/501" grandparentThumb="/library/metadata/400/thumb/1"
         thumb="/library/metadata/501/thumb/2">
    <Media id="9"><Part id="77" key="/library/parts/77/1700/file.mkv">
      <Stream id="301" streamType="3"/></Part></Media>
  </Video>
  <Hub><Video ratingKey="999" key="/library/metadata/999"/></Hub>
</MediaContainer>"""


def test_the_flung_item_and_what_its_answers_name_pass_and_nothing_else() -> None:
    scope = GrantScope.for_fling("/library/metadata/501", "/playQueues/7?own=1&window=100")
    assert scope.check("/library/metadata/501", "includeRelated=1") == ""
    assert scope.check("/playQueues/7", "window=100") == ""
    assert scope.check("/library/parts/77/1700/file.mkv", "") != "", "parts are unknown until learnt"
    scope.learn(SHOW_SEASON)
    assert scope.check("/library/parts/77/1700/file.mkv", "") == ""
    assert scope.check("/library/streams/301", "encoding=utf-8") == ""
    assert scope.check("/library/metadata/400/thumb/1", "") == ""  # the show's poster
    for path in ("/library/metadata/400", "/library/metadata/400/children", "/library/metadata/999",
                 "/library/metadata/1", "/library/parts/78/1/file.mkv", "/library/streams/302", "/playQueues/8"):
        assert "not" in scope.check(path, ""), path
    assert scope.check("/identity", "") == ""  # no item: the allow-list decides


def test_transcodes_and_reports_only_for_the_flung_item() -> None:
    scope = GrantScope.for_fling("/library/metadata/501")
    start = "/video/:/transcode/universal/start.m3u8"
    assert scope.check(start, "path=%2Flibrary%2Fmetadata%2F501&session=abc&protocol=hls") == ""
    assert scope.check("/video/:/transcode/universal/session/abc/base/index.m3u8", "") == ""
    assert scope.check("/video/:/transcode/universal/ping", "session=abc") == ""
    assert scope.check(start, "path=%2Flibrary%2Fmetadata%2F1&session=def") != ""
    assert scope.check(start, "path=http%3A%2F%2F127.0.0.1%3A32400%2Flibrary%2Fmetadata%2F1") != ""
    assert scope.check("/video/:/transcode/universal/session/def/base/index.m3u8", "") != ""
    assert scope.check("/video/:/transcode/universal/stop", "") != ""
    assert scope.check("/photo/:/transcode", "url=%2Flibrary%2Fmetadata%2F501%2Fthumb%2F2&width=300") == ""
    assert scope.check("/photo/:/transcode", "url=%2Flibrary%2Fmetadata%2F2%2Fthumb%2F1") != ""
    assert scope.check("/:/timeline", "ratingKey=501&key=%2Flibrary%2Fmetadata%2F501&state=playing") == ""
    assert scope.check("/:/scrobble", "key=501&identifier=com.plexapp.plugins.library") == ""
    assert scope.check("/:/scrobble", "key=12&identifier=com.plexapp.plugins.library") != ""
    assert scope.check("/:/timeline", "state=stopped") == ""


def test_a_transcode_playlist_teaches_its_session() -> None:
    scope = GrantScope.for_fling("/library/metadata/501")
    assert scope.check("/video/:/transcode/universal/session/srv-42/base/index.m3u8", "") != ""
    scope.learn(b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=2000000\nsession/srv-42/base/index.m3u8\n")
    assert scope.check("/video/:/transcode/universal/session/srv-42/base/00001.ts", "") == ""


def test_json_answers_and_play_queues_teach_their_items() -> None:
    scope = GrantScope.for_fling("/library/metadata/10", "/playQueues/3")
    scope.learn(json.dumps({"MediaContainer": {"playQueueID": 3, "Metadata": [
        {"ratingKey": "10", "Media": [{"id": 1, "Part": [{"id": 110, "Stream": [{"id": 1100}]}]}]},
        {"ratingKey": "11", "Media": [{"id": 2, "Part": [{"id": 111}]}]},
    ], "Hub": [{"Metadata": [{"ratingKey": "66"}]}]}}).encode())
    for path in ("/library/metadata/11", "/library/parts/111/x/file.mp3", "/library/streams/1100"):
        assert scope.check(path, "") == "", path
    assert scope.check("/library/metadata/66", "") != ""


def test_learning_is_bounded_and_ignores_dtds() -> None:
    scope = GrantScope.for_fling("/library/metadata/1")
    many = "".join(f'<Video ratingKey="{i}"/>' for i in range(MAX_IDS + 50))
    scope.learn(f"<MediaContainer>{many}</MediaContainer>".encode())
    assert len(scope.metadata) == MAX_IDS
    evil = GrantScope.for_fling("/library/metadata/1")
    evil.learn(b'<!DOCTYPE x [<!ENTITY e "7">]><MediaContainer><Video ratingKey="&e;"/></MediaContainer>')
    assert evil.check("/library/metadata/7", "") != ""


def test_a_dtd_teaches_nothing_whatever_the_encoding_of_the_answer() -> None:
    # In UTF-16 the bytes "<!DOCTYPE" never appear, so only a parser's own refusal catches the DTD.
    doc = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY e "7">]>'
           '<MediaContainer><Video ratingKey="&e;"/><Video ratingKey="8"/></MediaContainer>')
    scope = GrantScope.for_fling("/library/metadata/1")
    scope.learn(doc.encode("utf-16-le"))
    assert scope.check("/library/metadata/7", "") != "", "an entity from the answer widened the grant"
    assert scope.check("/library/metadata/8", "") != "", "an answer with a DTD was learnt from"
    plain = GrantScope.for_fling("/library/metadata/1")
    plain.learn('<MediaContainer><Video ratingKey="8"/></MediaContainer>'.encode("utf-16-le"))
    assert plain.check("/library/metadata/8", "") == "", "a UTF-16 answer without a DTD still teaches"
