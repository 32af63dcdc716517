variable "name" {
  description = "Name of the Veza installation; the cluster is veza-<name>."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the chart needs 1.30 or newer)."
  type        = string
  default     = "1.33"
}

variable "subnet_ids" {
  description = "Private subnets for the control-plane interfaces and the nodes."
  type        = list(string)
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint; empty keeps the endpoint private only."
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "KMS key for envelope encryption of Secrets and the control-plane log group."
  type        = string
}

variable "node_instance_types" {
  description = "Instance types of the managed node group."
  type        = list(string)
  default     = ["m6i.large"]
}

variable "node_min_size" {
  description = "Fewest nodes (also the initial size)."
  type        = number
  default     = 3
}

variable "node_max_size" {
  description = "Most nodes."
  type        = number
  default     = 10
}

variable "log_retention_days" {
  description = "Retention of the control-plane logs, in days."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
