"""`hbi explain`: the word-by-frame Banzhaf interaction map of a caption and a video at each level, drawn
as a PNG (the paper's visualisation): rows are words (text clusters above the entity level), columns
frames (video clusters)."""
import torch

import hbi_ops
from hbi_model import build, checkpoint
from hbi_model.data import collate


def add_arguments(parser):
    """The flags of `hbi explain` (cli.py adds the ones every command shares)."""
    parser.add_argument("--caption", help="a caption (default: the test video's own)")
    parser.add_argument("--index", type=int, default=0, help="which test video")
    parser.add_argument("--png", default="explain.png")


@torch.no_grad()
def interaction_maps(model, batch):
    """{level: (interaction [T_l, V_l], word labels)} for the single pair in `batch`: the exact index."""
    text, text_mask, video, video_mask = model.encode(batch["input_ids"], batch["attention_mask"],
                                                      batch["pixel_values"], batch["frame_mask"])
    maps = {}
    for level, t, tm, v, vm in model.levels(text, text_mask, video, video_mask):
        _, (tn, vn, wt, wv) = model.level_similarity(level, t, tm, v, vm)
        tm = tm if tm is not None else torch.ones(tn.shape[:2], dtype=torch.bool)
        vm = vm if vm is not None else torch.ones(vn.shape[:2], dtype=torch.bool)
        sim = torch.einsum("btd,bvd->btv", tn, vn)
        interaction = hbi_ops.banzhaf_interaction(
            sim.float(), tm, vm, wt.float().masked_fill(~tm, 0), wv.float().masked_fill(~vm, 0))[0]
        maps[level] = (interaction[tm[0]][:, vm[0]], int(tm.sum()), int(vm.sum()))
    return maps


def draw(maps, words, path, caption):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(4.5 * len(maps), 4.5))
    axes = [axes] if len(maps) == 1 else axes
    for ax, (level, (interaction, num_words, num_frames)) in zip(axes, maps.items()):
        image = ax.imshow(interaction.numpy(), cmap="RdBu_r", vmin=-interaction.abs().max(), vmax=interaction.abs().max())
        labels = words[:num_words] if level == "entity" else [f"cluster {i}" for i in range(num_words)]
        ax.set_yticks(range(num_words), labels, fontsize=7)
        ax.set_xticks(range(num_frames), [f"f{j}" if level == "entity" else f"c{j}" for j in range(num_frames)],
                      fontsize=7)
        ax.set_title(f"{level} level", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def explain(settings):
    tokenizer, model = build.model(settings)
    if checkpoint.exists(settings["output"]):
        checkpoint.load(settings["output"], model)
    else:
        print(f"no checkpoint in {settings['output']}: explaining an untrained model")
    model.eval()
    _, test_set = build.datasets(settings)
    item = dict(test_set[settings.get("index", 0)])
    if settings.get("caption"):
        item["caption"] = settings["caption"]
    batch = collate([item], tokenizer, settings["max_words"])
    maps = interaction_maps(model, batch)
    words = tokenizer.decode(batch["input_ids"][0].tolist())
    draw(maps, words, settings["png"], item["caption"])
    print(f"wrote {settings['png']}: {', '.join(maps)} levels for '{item['caption']}'")
    return maps
