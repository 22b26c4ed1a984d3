"""The commented config file that `generator-host init` writes.

Kept beside settings.py so every key documented here exists there; a test loads this
template and checks it produces no problems.
"""

TEMPLATE = """\
# Chat Diffusion generator host configuration.
# Every key is optional; a missing key keeps its default. Start with:
#   generator-host run            (uses this file)
#   generator-host run --help

[twitch]
# The channel whose chat paints (your Twitch login, without '#').
channel = ""
# The bot account's login; empty means the channel itself.
login = ""
# OAuth token with chat:read and chat:write scopes. Better: leave this empty and set the
# environment variable CHAT_DIFFUSION_TWITCH_TOKEN. This file is created readable by you alone.
token = ""
# Messages per send_window the bot may send. 0 follows Twitch by itself: 20, or 100 while
# the bot account is a moderator or the broadcaster of the channel. A number fixes it.
send_limit = 0
send_window = 30.0
# Twitch's chat server; change only for testing.
host = "irc.chat.twitch.tv"
port = 6697
tls = true
# Reconnect backoff after a dropped connection doubles up to this many seconds.
reconnect_max_seconds = 60.0
# Replies waiting for the send limit; older ones are dropped past this.
max_pending_sends = 30
# Twitch Shared Chat (several channels' chats joined): false ignores commands from the
# other channels' viewers; true obeys them too, with the roles they hold in YOUR channel.
shared_chat_commands = false

[model]
# A diffusers model id (downloaded once, with a progress bar) or a local folder.
model = "stabilityai/sd-turbo"
# auto | sd | turbo | sdxl | sdxl-turbo: picks default steps and guidance (auto: from the model).
family = "auto"
# auto | cuda | mps | cpu
device = "auto"
# auto | float16 | bfloat16 | float32. auto: float16 on CUDA; on the CPU bfloat16 for each
# part the first warm-up measures faster (remembered per machine and model), else float32.
dtype = "auto"
# The VAE decoder: auto (tiny on CPU and Apple MPS, full on CUDA) | full | tiny.
# The tiny decoder (TAESD, ~10 MB, downloaded once) is many times faster at stream quality.
vae = "auto"
tiny_vae = "madebyollin/taesd"
tiny_vae_xl = "madebyollin/taesdxl"
# torch's CPU threads; 0: one per physical core.
cpu_threads = 0
# 0 / -1 mean: the model family's default (Turbo: 1 step, guidance 0; SD 1.5: 25, 7).
steps = 0
guidance = -1.0
# 0 means the model's native size.
width = 0
height = 0
# Requests with the same settings generated together in one call when that is faster.
max_batch = 4
# Generate one throw-away image at start so the first chat request is not the slow one.
warmup = true
# Caps that chat can never exceed.
max_steps = 50
max_size = 1024
max_guidance = 20.0
# The most images one request may make: count=... may ask for up to the smaller of this
# and [show] grid (the OBS panel's grid).
max_images = 9
# Memory savers for small GPUs.
attention_slicing = false
cpu_offload = false

[safety]
# true keeps the Stable Diffusion safety checker on. Turning it off logs a warning.
enabled = true
# 0 flags exactly what stock diffusers flags; positive is stricter, negative looser.
threshold_offset = 0.0
# What happens to a flagged image: blur | hold (until !approve) | skip | off
approval_mode = "blur"
# The checker used when the model folder has none (SDXL and Turbo models ship none).
checker = "CompVis/stable-diffusion-safety-checker"
# CLIP text tower that embeds the category phrases below (hub id or folder); "auto" is
# a clip_text/ folder next to the checker, else openai/clip-vit-large-patch14 (downloaded
# once, about 1.7 GB: the repo keeps both towers in one file; phrase embeddings are
# cached, so later starts skip it).
categories_text_model = "auto"

# Categories beyond the checker's sexual concepts, judged on the same CLIP image embedding
# (docs/safety.md): a tile is flagged when the checker OR any category flags it, and the
# approval_mode above applies. On by default: gore, violence, hate_symbols, with built-in
# phrases. Keys: phrases (texts), vectors (a .npy, .safetensors or .pt file of CLIP
# ViT-L/14 projection vectors, e.g. Q16's learned prompts), threshold (a tile whose best
# cosine with the category is above it is flagged), applies_to (images | prompts | both;
# prompts are not checked yet, a warning says so),
# enabled. A table named like a default changes only the keys it sets.
[safety.categories.gore]
threshold = 0.26

[safety.categories.violence]
threshold = 0.26

[safety.categories.hate_symbols]
threshold = 0.26

# Your own, e.g. for an arachnophobic streamer:
# [safety.categories.spiders]
# phrases = ["a photo of a spider", "a tarantula", "a spider web with a spider"]
# threshold = 0.26

[show]
# Images per request: 1, 4 or 9 (shown as a grid).
grid = 1
# Seconds between slideshow images; 0 is off.
slideshow_seconds = 0.0
command_prefix = "!"
# Extra command words, "alias=command", e.g. ["gen=generate", "g=generate"].
aliases = []
# Minimum role per command, "command=role" (everyone, subscriber, vip, moderator,
# broadcaster), e.g. ["approve=moderator"] lets moderators approve.
command_roles = []
# While others wait, a grid request is cut to one image to keep things moving.
cut_to_one_when_waiting = true
# How many past images !prev, !next and the slideshow can reach.
history_size = 200
# Refusal replies per send window; more are merged into one line per reason.
refusal_replies = 6
# !queue's wait estimate before any image was timed.
first_estimate_seconds = 10.0
# Seconds a new image stays on screen at least before the next one replaces it (fast GPUs
# finish faster than viewers can look); finished images wait their turn. 0 is off.
min_display_seconds = 4.0

[moderation]
# Empty: the default blocklist shipped with the host. One word, phrase or /pattern/ a line.
blocklist_file = ""
forced_negative_prompt = ""
max_prompt_length = 300
user_cooldown_seconds = 30.0
max_queued_per_user = 1
max_queue = 50
ignored_users = []
# Who may request at start: everyone | subscribers | moderators (moderators switch it with !mode).
mode = "everyone"
# This role and above skip the cooldown and the per-user queue limit.
exempt_role = "moderator"

[link]
# Where the OBS script connects. Keep 127.0.0.1 unless the host runs on another machine.
host = "127.0.0.1"
port = 8765
# For a host on another machine: a TLS certificate and key (PEM files).
tls_cert = ""
tls_key = ""
# Empty: a token is generated on first run and stored in the data folder (printed path).
token = ""

[gallery]
# Empty: <data folder>/gallery
folder = ""
save_images = true
# Also write stream.png, requester.txt and prompt.txt for setups without the OBS script.
legacy_files = false
# Where the legacy files go; empty: <gallery folder>/stream
legacy_folder = ""
"""
