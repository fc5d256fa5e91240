"""The pure rooms of the WhatsApp adapter: content translation and sender identity.

No client, no channel, no event loop: protobufs in, values out.
"""

from __future__ import annotations

import pytest
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from bridge.envelope import MediaKind, MediaRef
from channels.whatsapp.content import (
    MediaSpec,
    bare_ref,
    clip,
    describe,
    enum_name,
    jid_str,
    join_notes,
    parse_jid,
    quote_participant,
    timestamp_s,
    unwrap,
    user_of,
)
from channels.whatsapp.identity import sender_identity
from tests.channels.test_whatsapp_fake import EMPTY_JID, jid

# --------------------------------------------------------------------------- JIDs


@pytest.mark.parametrize("text, chat_id", [
    ("491512345678@s.whatsapp.net", "491512345678@s.whatsapp.net"),
    ("491512345678:7@s.whatsapp.net", "491512345678@s.whatsapp.net"),  # device dropped
    ("12345.0:3@lid", "12345@lid"),  # agent and device dropped
    ("120363000000000001@g.us", "120363000000000001@g.us"),
])
def test_parse_jid_then_jid_str_is_the_chat_id(text, chat_id):
    assert jid_str(parse_jid(text)) == chat_id


@pytest.mark.parametrize("text", ["", "no-server", "user@"])
def test_parse_jid_refuses_what_is_not_a_jid(text):
    with pytest.raises(ValueError, match="not a WhatsApp JID"):
        parse_jid(text)


def test_jid_str_of_a_server_only_jid_and_user_of():
    assert jid_str(N.JID(User="", Server="broadcast", RawAgent=0, Device=0, Integrator=0,
                         IsEmpty=False)) == "broadcast"
    assert user_of("123.0:4@lid") == "123"
    assert user_of("4915@s.whatsapp.net") == "4915"


def test_timestamps_in_seconds_or_milliseconds_become_seconds():
    assert timestamp_s(1_750_000_000) == 1_750_000_000.0
    assert timestamp_s(1_750_000_000_123) == pytest.approx(1_750_000_000.123)


def test_a_quote_names_the_phone_jid_when_a_lid_sender_has_one():
    assert quote_participant(jid("777@lid"), jid("4915@s.whatsapp.net")) == "4915@s.whatsapp.net"
    assert quote_participant(jid("777@lid"), EMPTY_JID) == "777@lid"
    assert quote_participant(jid("4915@s.whatsapp.net"), jid("777@lid")) == "4915@s.whatsapp.net"


# --------------------------------------------------------------------------- content


def test_wrappers_are_peeled_off():
    inner = E.Message(conversation="inside")
    wrapped = E.Message(ephemeralMessage=E.FutureProofMessage(
        message=E.Message(viewOnceMessage=E.FutureProofMessage(message=inner))))
    assert unwrap(wrapped) == inner
    assert describe(unwrap(wrapped)).text == "inside"


def test_text_and_its_context_info():
    context = E.ContextInfo(stanzaID="Q1", mentionedJID=["1@s.whatsapp.net"])
    content = describe(E.Message(extendedTextMessage=E.ExtendedTextMessage(
        text="hello", contextInfo=context)))
    assert (content.text, content.media, content.skipped) == ("hello", [], None)
    assert content.context == context


def test_an_image_with_caption_is_described_not_fetched():
    image = E.ImageMessage(caption="look", mimetype="image/png", width=640, height=480,
                           fileLength=1234)
    content = describe(E.Message(imageMessage=image))
    assert content.text == "look"
    [spec] = content.media
    assert (spec.kind, spec.mime, spec.width, spec.height, spec.size, spec.downloadable) == (
        MediaKind.IMAGE, "image/png", 640, 480, 1234, True)
    assert spec.sub == image


def test_a_voice_note_and_its_mime_parameters():
    content = describe(E.Message(audioMessage=E.AudioMessage(
        PTT=True, mimetype="audio/ogg; codecs=opus", seconds=7)))
    [spec] = content.media
    assert (spec.kind, spec.mime, spec.duration_s) == (MediaKind.VOICE, "audio/ogg", 7.0)


def test_locations_and_contacts_are_notes_without_bytes():
    content = describe(E.Message(locationMessage=E.LocationMessage(
        degreesLatitude=52.52, degreesLongitude=13.405, name="Berlin")))
    [spec] = content.media
    assert spec.kind is MediaKind.LOCATION and not spec.downloadable
    assert spec.note == "52.52000, 13.40500 — Berlin"
    vcard = "BEGIN:VCARD\nFN:Bob\nitem1.TEL;waid=4915123:+49 151 23\nEND:VCARD"
    content = describe(E.Message(contactMessage=E.ContactMessage(displayName="Bob",
                                                                 vcard=vcard)))
    [spec] = content.media
    assert (spec.kind, spec.note, spec.downloadable) == (MediaKind.CONTACT, "Bob +4915123",
                                                         False)


@pytest.mark.parametrize("message, why", [
    (E.Message(reactionMessage=E.ReactionMessage(text="👍")), "reactionMessage"),
    (E.Message(protocolMessage=E.ProtocolMessage()), "protocolMessage"),
    (E.Message(), "no supported content"),
])
def test_messages_with_nothing_to_answer_are_skipped(message, why):
    assert describe(message).skipped == why


def test_bare_ref_describes_without_bytes():
    spec = MediaSpec(MediaKind.DOCUMENT, mime="application/pdf", filename="a.pdf", size=10,
                     note="scanned")
    assert bare_ref(spec) == MediaRef(kind=MediaKind.DOCUMENT, mime="application/pdf",
                                      filename="a.pdf", size=10, note="scanned")
    assert bare_ref(spec, note="too big", size=99).note == "too big"
    assert bare_ref(MediaSpec(MediaKind.LOCATION, mime="x/y", downloadable=False)).mime is None


def test_small_text_helpers():
    assert clip("  a\n b  ", 10) == "a b"
    assert clip("x" * 20, 5) == "xxxx…"
    assert join_notes(None, "a", "", "b") == "a; b"
    assert join_notes(None, "") is None
    event = N.LoggedOut(OnConnect=True, Reason=N.ConnectFailureReason.LOGGED_OUT)
    assert enum_name(event, "Reason") == "LOGGED_OUT"
    assert enum_name(object(), "Reason") == "unknown"


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("sender, phone, lid, sender_id, aliases", [
    ("4915@s.whatsapp.net", "4915", None, "+4915", ("4915@s.whatsapp.net", "4915")),
    ("777@lid", "4915", "777", "+4915", ("777@lid", "4915@s.whatsapp.net", "4915")),
    ("777@lid", None, "777", "777@lid", ()),  # the phone is unknown: the LID is the id
    ("4915@s.whatsapp.net", "4915", "777", "+4915",
     ("4915@s.whatsapp.net", "777@lid", "4915")),
])
def test_sender_identity(sender, phone, lid, sender_id, aliases):
    who = sender_identity(jid(sender), phone=phone, lid=lid)
    assert (who.sender_id, who.aliases) == (sender_id, aliases)
    assert jid_str(who.jid) == sender
