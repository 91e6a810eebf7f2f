//! A spec written back as TOML in the documented layout.

use super::*;

impl ModelSpec {
    /// Writes the spec back as TOML in the documented layout (round-trips through [`Self::parse`]).
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "format = {SPEC_FORMAT}\nname = {}\n\n[task]\n",
            toml_str(&self.name)
        );
        s += &format!("kind = \"{}\"\n", self.task.kind.name());
        match (&self.task.class_names, self.task.kind) {
            (Some(names), _) => s += &format!("classes = [{}]\n", toml_list(names)),
            (None, TaskKind::Multiclass { classes }) => s += &format!("classes = {classes}\n"),
            _ => {}
        }
        s += &format!("target = {}\nfeatures = [", toml_str(&self.task.target));
        s += &toml_list(&self.task.features);
        s += "]\n";
        if self.task.standardize_target {
            s += "standardize_target = true\n";
        }
        for (name, c) in &self.task.columns {
            s += &format!("\n[task.columns.{}]\n", toml_str(name));
            if let Some(cats) = &c.categories {
                s += &format!("categories = [{}]\n", toml_list(cats));
            }
            if let Some(d) = &c.discover {
                s += &format!("discover = {}\nmin_count = {}\n", d.slots, d.min_count);
            }
            if c.missing != Missing::Error {
                s += &format!("missing = \"{}\"\n", c.missing.name());
            }
            if let Some(f) = c.fill {
                s += &format!("fill = {f:?}\n");
            }
            if c.indicator {
                s += "indicator = true\n";
            }
        }
        s += "\n[model]\n";
        s += &format!(
            "hidden = [{}]\nactivation = \"{}\"\ndropout = {:?}\n\n[training]\n",
            self.model
                .hidden
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            serde_json::to_value(self.model.activation)
                .unwrap()
                .as_str()
                .unwrap(),
            self.model.dropout
        );
        s += &format!(
            "optimizer = \"{}\"\nlearning_rate = {:?}\nlocal_epochs = {}\nbatch_size = {}\nseed = {}\nweight_decay = {:?}\n",
            serde_json::to_value(self.training.optimizer)
                .unwrap()
                .as_str()
                .unwrap(),
            self.training.learning_rate,
            self.training.local_epochs,
            self.training.batch_size,
            self.training.seed,
            self.training.weight_decay,
        );
        if let Some(mu) = self.training.fedprox_mu {
            s += &format!("fedprox_mu = {mu:?}\n");
        }
        if let Some(e) = self.training.early_stopping {
            s += &format!(
                "\n[training.early_stopping]\npatience = {}\nmin_delta = {:?}\n",
                e.patience, e.min_delta
            );
        }
        if !self.privacy.is_default() {
            s += "\n[privacy]\n";
            if let Some(a) = self.privacy.membership_max_advantage {
                s += &format!("membership_max_advantage = {a:?}\n");
            }
            if let Some(d) = &self.privacy.dp {
                s += &format!(
                    "\n[privacy.dp]\nmode = \"{}\"\nclip = {:?}\nnoise_multiplier = {:?}\ndelta = {:?}\n",
                    match d.mode {
                        DpMode::Local => "local",
                        DpMode::Central => "central",
                    },
                    d.clip,
                    d.noise_multiplier,
                    d.delta
                );
            }
        }
        s
    }
}
